"""The pytest plugin (entry point `dtq`): the `dtq_sim` fixture tests one's own task types on the
simulator.

    from wordcount import WordCount

    def test_wordcount(dtq_sim):
        assert WordCount.submit(text="a b a").result() == {"a": 2, "b": 1}

    @pytest.mark.dtq_sim(seed=7, workers=3)
    def test_wordcount_survives_a_worker_crash(dtq_sim):
        handle = dtq_sim.submit(WordCount, text="a b")
        dtq_sim.kill("worker-1", restart=True)
        assert handle.result() == {"a": 1, "b": 1}
        assert dtq_sim.check().ok

The rule: each test gets a fresh simulated cluster (`dtq.client.app.SimApp`, the same `App`
interface as `dtq.connect`), made the default app for the test's duration, so
`TaskClass.submit(...)` and code written against `dtq.connect` run on it unchanged. The marker
`dtq_sim(...)` passes `dtq.simulate`'s options (seed, workers, coordinators, tasks,
concurrency). The module imports nothing of dtq until a test asks for the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dtq.client.app import SimApp

MARKER = "dtq_sim"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(seed=0, workers=2, coordinators=1, tasks=(), concurrency=None): "
        "options of the simulated cluster the dtq_sim fixture gives this test")


@pytest.fixture
def dtq_sim(request: pytest.FixtureRequest) -> Iterator[SimApp]:
    """A simulated dtq cluster for this test (`dtq.client.app.SimApp`), the default app meanwhile:
    `submit`, `dag`, handles' `result`/`wait`/`state`/`cancel`, faults (`kill`, `restart`,
    `pause`, `resume`, `partition`, `heal`), `advance(ms)`, `check()`. Options from
    `@pytest.mark.dtq_sim(seed=..., workers=..., ...)`."""
    from dtq.client.app import SimApp

    marker = request.node.get_closest_marker(MARKER)
    options = dict(marker.kwargs) if marker is not None else {}
    app = SimApp(**options)
    with app.as_default():
        yield app
    app.close()
