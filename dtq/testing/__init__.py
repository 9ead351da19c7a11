"""Testing with dtq and testing dtq's extension points.

`conformance` holds the suites a third-party store or transport runs (as trio ships
check_one_way_stream); `pytest_plugin` is the `dtq_sim` fixture for one's own task types;
`testbed` starts a local RabbitMQ cluster and a Sentinel-watched Redis pair.

The suites need pytest, which an installation without the `test` extra does not have: they are
imported when first named (`from dtq.testing import StoreConformance`), so that `dtq testbed`
and the rest of the command line work without it.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtq.testing.conformance import (
        Connect,
        Inbox,
        ManualClock,
        PollingClock,
        StoreClock,
        StoreConformance,
        TransportConformance,
    )

__all__ = ["Connect", "Inbox", "ManualClock", "PollingClock", "StoreClock", "StoreConformance",
           "TransportConformance"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'dtq.testing' has no attribute {name!r}")
    from dtq.testing import conformance

    value = getattr(conformance, name)
    globals()[name] = value
    return value
