"""The HTML space-time report: its structure (read back with html.parser) and its rendering
in headless Chromium (skipped when Chromium is not installed)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import dtq.report.spacetime as spacetime
from dtq.clock import VectorClock
from dtq.history import Event
from dtq.report.layout import TimeScale
from dtq.report.model import SYSTEM_ACTORS, build, order_lanes
from dtq.report.spacetime import render_report, write_report
from dtq.scenario.model import Scenario, load
from dtq.scenario.sim import RunResult, run_memory

ROOT = Path(__file__).resolve().parents[2]
WORKER_CRASH = ROOT / "scenarios" / "worker-crash.toml"
ROUND_ROBIN = ROOT / "scenarios" / "round-robin.toml"
FAULTY = ROOT / "scenarios" / "round-robin-faulty.toml"


class Page(HTMLParser):
    """Every start tag with its attributes, the text, and the contents of each script."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.scripts: dict[str, str] = {}
        self._script: str | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag == "script":
            self._script = a.get("id", "inline")
            self.scripts[self._script] = ""

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.scripts[self._script] += data
        else:
            self.text.append(data)

    def having(self, classes: str, tag: str | None = None) -> list[dict[str, str]]:
        """Elements with every class in `classes` (space-separated), optionally of one tag."""
        wanted = set(classes.split())
        return [a for t, a in self.elements
                if wanted <= set(a.get("class", "").split()) and (tag is None or t == tag)]

    def by_id(self, ident: str) -> dict[str, str]:
        found = [a for _, a in self.elements if a.get("id") == ident]
        assert len(found) == 1, f"expected one #{ident}, found {len(found)}"
        return found[0]

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def run(path: Path, seed: int | None = None) -> tuple[Scenario, RunResult]:
    scenario = load(path)
    return scenario, run_memory(scenario, seed, trace=True)


@pytest.fixture(scope="module")
def crash() -> tuple[Scenario, RunResult, Page]:
    scenario, result = run(WORKER_CRASH)
    return scenario, result, Page(render_report(scenario, result))


@pytest.fixture(scope="module")
def rr() -> tuple[Scenario, RunResult, Page]:
    scenario, result = run(ROUND_ROBIN)
    return scenario, result, Page(render_report(scenario, result))


def actors(result: RunResult) -> set[str]:
    return {e.actor for e in result.events if e.actor not in SYSTEM_ACTORS}


def matched_receives(events: list[Event]) -> int:
    sent = {e.data["msg"] for e in events if e.kind == "send"}
    return sum(1 for e in events if e.kind == "recv" and e.data["msg"] in sent)


def unreceived_sends(events: list[Event]) -> int:
    got = {e.data["msg"] for e in events if e.kind == "recv"}
    return sum(1 for e in events if e.kind == "send" and e.data["msg"] not in got)


# --- structure of a real run -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["crash", "rr"])
def test_one_lane_per_actor(name: str, request: pytest.FixtureRequest) -> None:
    _, result, page = request.getfixturevalue(name)
    lanes = [a["data-actor"] for a in page.having("lane", "g")]
    assert sorted(lanes) == sorted(actors(result))
    assert lanes[0] == "client" and lanes[1] == "coordinator-1"
    assert lanes[2:] == ["worker-1", "worker-2", "worker-3"]
    labels = [a["data-actor"] for a in page.having("lane-label")]
    assert labels == lanes


@pytest.mark.parametrize("name", ["crash", "rr"])
def test_one_arrow_per_delivery(name: str, request: pytest.FixtureRequest) -> None:
    _, result, page = request.getfixturevalue(name)
    arrows = page.having("msg")
    delivered = [a for a in arrows if "undelivered" not in a["class"].split()]
    assert len(delivered) == matched_receives(result.events) > 0
    assert len(arrows) - len(delivered) == unreceived_sends(result.events)
    recv_seqs = {e.seq for e in result.events if e.kind == "recv"}
    assert {int(a["data-recv"]) for a in delivered} <= recv_seqs
    sends = {e.seq: e.data["msg"] for e in result.events if e.kind == "send"}
    assert all(sends[int(a["data-send"])] == a["data-msg"] for a in arrows)


def test_every_delivery_of_a_message_is_drawn(crash: tuple[Scenario, RunResult, Page]) -> None:
    _, result, page = crash
    recvs = Counter(e.data["msg"] for e in result.events if e.kind == "recv")
    again = [m for m, n in recvs.items() if n > 1]
    assert again, "the killed worker's deliveries should come back to another worker"
    drawn = Counter(a["data-msg"] for a in page.having("msg"))
    for msg in again:
        assert drawn[msg] == recvs[msg]
    assert len(page.having("again")) == sum(n - 1 for n in recvs.values())


@pytest.mark.parametrize("name", ["crash", "rr"])
def test_one_dot_per_event_with_its_clock(name: str, request: pytest.FixtureRequest) -> None:
    _, result, page = request.getfixturevalue(name)
    wanted = [e for e in result.events
              if e.actor not in SYSTEM_ACTORS and e.kind not in ("send", "recv")]
    dots = page.having("event", "circle")
    assert Counter(a["data-kind"] for a in dots) == Counter(e.kind for e in wanted)
    data = json.loads(page.scripts["dtq-data"])["events"]
    for e in wanted:
        assert data[str(e.seq)][3] == dict(e.clock.entries)


def test_the_kill_is_shaded(crash: tuple[Scenario, RunResult, Page]) -> None:
    _, _, page = crash
    faults = page.having("fault", "rect")
    down = [a for a in faults if a.get("data-fault") == "down"]
    assert [a["data-actor"] for a in down] == ["worker-1"]
    assert float(down[0]["width"]) > 50
    assert [a["data-actor"] for a in faults if a.get("data-fault") == "kill"] == ["worker-1"]
    assert "kill worker-1 for 1000 ms" in page.all_text


def test_header_shows_the_summary(crash: tuple[Scenario, RunResult, Page]) -> None:
    scenario, result, page = crash
    text = page.all_text
    assert scenario.name in text and scenario.description in text
    assert result.summary["history_digest"] in text
    assert "OK" in text and "coordinator-1 (epoch 1)" in text
    assert page.having("verdict")[0]["class"] == "verdict ok"
    pre = text[text.index("Summary (JSON)") + len("Summary (JSON)"):]
    assert json.loads(pre[:pre.rindex("}") + 1]) == json.loads(json.dumps(result.summary))


def test_violations_are_shown_in_red(crash: tuple[Scenario, RunResult, Page]) -> None:
    scenario, result, _ = crash
    summary = {**result.summary, "ok": False,
               "violations": [{"invariant": "no_lost_task", "detail": "task-00003 <lost>"}]}
    page = Page(render_report(scenario, RunResult(summary=summary, events=result.events)))
    assert page.by_id("violations")["class"] == "violations"
    assert "no_lost_task: task-00003 <lost>" in page.all_text
    assert page.having("verdict")[0]["class"] == "verdict failed"


@pytest.mark.parametrize("name", ["crash", "rr"])
def test_nothing_is_fetched_from_outside(name: str, request: pytest.FixtureRequest) -> None:
    scenario, result, page = request.getfixturevalue(name)
    html = render_report(scenario, result)
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(//" not in html
    for tag, a in page.elements:
        assert tag not in ("link", "img", "iframe", "object", "embed")
        assert "src" not in a, f"<{tag}> loads {a['src']}"
        assert not a.get("href", "#").lstrip().startswith(("//", "data:", "javascript:"))


def test_svg_ids_are_stable(crash: tuple[Scenario, RunResult, Page]) -> None:
    _, _, page = crash
    svg = page.by_id("spacetime")
    assert float(svg["width"]) == float(svg["data-width"]) > 0
    for ident in ("lane-labels", "messages", "events", "faults", "ticks", "legend", "panel",
                  "summary", "zoom", "how-to-read", "dtq-data"):
        page.by_id(ident)
    assert page.having("tick on"), "the static page labels some ticks before any script runs"


def test_write_report(tmp_path: Path, rr: tuple[Scenario, RunResult, Page]) -> None:
    scenario, result, _ = rr
    out = tmp_path / "rr.html"
    write_report(out, scenario, result)
    assert out.read_text(encoding="utf-8") == render_report(scenario, result)


def test_a_lossy_network_marks_drops_and_duplicates() -> None:
    scenario, result = run(FAULTY)
    page = Page(render_report(scenario, result))
    dropped = {e.data["msg"] for e in result.events if e.actor == "sim" and e.kind == "drop"}
    assert dropped
    assert {a["data-msg"] for a in page.having("dropped")} == dropped & {
        e.data["msg"] for e in result.events if e.kind == "send"}
    assert "dropped, sent again" in page.all_text


def test_arrows_are_capped_with_a_note(monkeypatch: pytest.MonkeyPatch,
                                       rr: tuple[Scenario, RunResult, Page]) -> None:
    scenario, result, _ = rr
    monkeypatch.setattr(spacetime, "MAX_ARROWS", 7)
    page = Page(render_report(scenario, result))
    assert len(page.having("msg")) == 7
    total = matched_receives(result.events) + unreceived_sends(result.events)
    assert f"drew the first 7 of {total} message arrows" in page.all_text


# --- structure of a hand-made history (a real-backend-like run) --------------------------------

T0 = 1_700_000_000_000


def ev(seq: int, t: int, actor: str, kind: str, clock: Mapping[str, int] | None = None,
       data: Mapping[str, Any] | None = None) -> Event:
    return Event(seq=seq, time_ms=T0 + t, actor=actor, kind=kind,
                 clock=VectorClock.of(clock or {}), data=data or {})


def handmade() -> list[Event]:
    c1 = "coordinator-1"
    return [
        ev(0, 0, c1, "leader", {c1: 1}, {"epoch": 1}),
        ev(1, 5, c1, "send", {c1: 2}, {"msg": "d1", "to": "work", "kind": "Dispatch"}),
        ev(2, 9, "worker-1", "recv", {c1: 2, "worker-1": 1},
           {"msg": "d1", "from": c1, "kind": "Dispatch"}),
        ev(3, 9, "worker-1", "started", {c1: 2, "worker-1": 2}, {"task": "t1"}),
        ev(4, 12, c1, "send", {c1: 3}, {"msg": "d2", "to": "work", "kind": "Dispatch"}),
        ev(5, 14, "worker-2", "recv", {"worker-2": 1},
           {"msg": "ghost", "from": "worker-9", "kind": "Completed"}),
        ev(6, 20, "runner", "fault", None,
           {"action": "pause", "targets": ["worker-2"], "duration_ms": 30}),
        ev(7, 20, "worker-2", "pause"),
        ev(8, 40, "sim", "partition", None, {"a": ["workers"], "b": ["broker"]}),
        ev(9, 60, "sim", "heal"),
        ev(10, 70, "runner", "connections_closed", None, {"count": 3}),
        ev(11, 80, "worker-1", "effect", {c1: 2, "worker-1": 3},
           {"task": "t1", "note": "</script><b>"}),
    ]


def test_handmade_history() -> None:
    events = handmade()
    scenario = Scenario(name="hand", path=Path("hand.toml"), description="made by hand")
    summary = {"scenario": "hand", "transport": "rabbitmq", "seed": 1, "ok": True,
               "tasks": {}, "violations": [], "leaders": [], "history_digest": "sha256:x"}
    html = render_report(scenario, RunResult(summary=summary, events=events))
    page = Page(html)
    assert [a["data-actor"] for a in page.having("lane", "g")] == [
        "coordinator-1", "worker-1", "worker-2"]
    classes = [a["class"] for a in page.having("msg")]
    assert sorted(classes) == ["msg", "msg orphan", "msg undelivered"]
    assert len(page.having("lost-x")) == 2
    frozen = [a for a in page.having("fault") if a.get("data-fault") == "frozen"]
    assert [a["data-actor"] for a in frozen] == ["worker-2"]
    assert "from 20 to 50 ms" in html, "a pause with no resume ends when the fault said"
    parts = [a for a in page.having("fault") if a.get("data-fault") == "partition"]
    assert sorted(a["data-actor"] for a in parts) == ["worker-1,worker-2"] * 2
    assert [a["data-kind"] for a in page.having("note")] == ["connections_closed"]
    assert "wall ms since start" in page.all_text
    ticks = [int(a["data-t"]) for a in page.having("tick")]
    assert ticks[0] == 0 and max(ticks) <= 80
    data = json.loads(page.scripts["dtq-data"])
    assert data["events"]["11"][4]["note"] == "</script><b>"
    assert data["events"]["11"][2] == 80
    assert "</script><b>" not in page.scripts["dtq-data"]


def test_lanes_order_clients_coordinators_workers() -> None:
    assert order_lanes(["worker-10", "worker-2", "coordinator-1", "client", "api"]) == (
        "api", "client", "coordinator-1", "worker-2", "worker-10")


def test_a_receive_in_the_same_ms_lands_right_of_its_send() -> None:
    events = [
        ev(0, 0, "a", "send", {"a": 1}, {"msg": "m", "to": "b", "kind": "X"}),
        ev(1, 0, "a", "started", {"a": 2}),
        ev(2, 0, "b", "recv", {"a": 1, "b": 1}, {"msg": "m", "from": "a", "kind": "X"}),
        ev(3, 0, "b", "effect", {"a": 1, "b": 2}),
        ev(4, 100, "b", "succeeded", {"a": 1, "b": 3}),
    ]
    d = build(events, T0 + 100)
    scale = TimeScale(events, d.lanes, T0, d.end_ms)
    x = [scale.x_of(e.seq) for e in events]
    assert x[0] < x[2] < x[3] < x[4] and x[0] < x[1]
    assert scale.x_at(T0 + 50) < x[4]
    assert scale.x_at(T0) <= x[0]


# --- in a browser ------------------------------------------------------------------------------


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (apt-get install -y chromium)")


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """One headless Chromium run; the timeout is the deadline."""
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args, url]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def crash_file(tmp_path_factory: pytest.TempPathFactory,
               crash: tuple[Scenario, RunResult, Page]) -> Path:
    scenario, result, _ = crash
    out = tmp_path_factory.mktemp("report") / "worker-crash.html"
    write_report(out, scenario, result)
    return out


def test_browser_runs_the_script(tmp_path: Path, crash_file: Path,
                                 crash: tuple[Scenario, RunResult, Page]) -> None:
    dom = chromium(tmp_path, crash_file.as_uri(), "--window-size=1600,1000",
                   "--dump-dom").stdout.decode()
    page = Page(dom)
    body = next(a for t, a in page.elements if t == "body")
    assert body.get("data-ready") == "1", "the page's script did not finish"
    svg = page.by_id("spacetime")
    assert float(svg["data-zoom"]) < 1, "a wide run is fitted to the window"
    assert float(svg["width"]) < float(svg["data-width"])
    assert page.having("tick on")
    assert len(page.having("lane", "g")) == len(actors(crash[1]))


def test_browser_highlights_causal_past_and_future(
        tmp_path: Path, crash_file: Path, crash: tuple[Scenario, RunResult, Page]) -> None:
    _, result, _ = crash
    started = [e for e in result.events if e.kind == "started"][-1]
    dom = chromium(tmp_path, f"{crash_file.as_uri()}#event={started.seq}",
                   "--dump-dom").stdout.decode()
    page = Page(dom)
    assert "focus" in page.by_id("spacetime")["class"].split()
    me = [a for a in page.having("event") if a["data-seq"] == str(started.seq)]
    assert "self" in me[0]["class"].split()
    past = {int(a["data-seq"]) for a in page.having("past", "circle")}
    expected = {e.seq for e in result.events if e.actor not in SYSTEM_ACTORS
                and e.kind not in ("send", "recv") and e.seq != started.seq
                and e.clock <= started.clock and len(e.clock)}
    assert past == expected
    assert "happened before" in page.all_text


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the decompressed scanlines of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height, zlib.decompress(b"".join(_idat(data)))


def _idat(data: bytes) -> Iterator[bytes]:
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == b"IDAT":
            yield data[pos + 8:pos + 8 + length]
        pos += length + 12


def test_browser_screenshot(tmp_path: Path, crash_file: Path) -> None:
    shot = tmp_path / "shot.png"
    chromium(tmp_path, crash_file.as_uri(), "--window-size=1600,1000", f"--screenshot={shot}")
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1600, 1000)
    assert len(set(pixels)) > 50, "the screenshot is blank"
