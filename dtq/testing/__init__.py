"""Testing with dtq and testing dtq's extension points.

`conformance` holds the suites a third-party store or transport runs (as trio ships
check_one_way_stream); `pytest_plugin` is the `dtq_sim` fixture for one's own task types;
`testbed` starts a local RabbitMQ cluster and a Sentinel-watched Redis pair.
"""

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
