"""Running scenario files on either backend in tests, and asserting they held."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dtq.scenario.model import load
from dtq.scenario.real import run_real
from dtq.scenario.sim import RunResult, run_memory

ROOT = Path(__file__).resolve().parent.parent
Run = Callable[[str], RunResult]
BACKENDS = ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
"""The backends every behavioural suite runs on: the params of the `backend` fixture."""


def runner_for(backend: str) -> Run:
    """A function running `scenarios/NAME` on `backend` (a name in `BACKENDS`)."""
    if backend == "rabbitmq":
        return lambda name: run_real(load(ROOT / "scenarios" / name), live=False)
    return lambda name: run_memory(load(ROOT / "scenarios" / name))


def held(result: RunResult) -> dict[str, Any]:
    """The summary, after asserting it is ok (the message says how to reproduce)."""
    s = result.summary
    assert s["ok"], f"{s['violations']}\nreproduce: dtq scenario run scenarios/" \
                    f"{s['scenario']}.toml --transport {s['transport']} --seed {s['seed']}"
    return s
