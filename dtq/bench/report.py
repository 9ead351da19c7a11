"""Results of `dtq bench all` as files: JSON (everything), Markdown tables and a PNG chart.

Any section may be missing (a sub-benchmark that was not run or failed); its table and panel
are then left out. The chart uses matplotlib's Agg backend, so it needs no display.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dtq.bench.common import BenchError

UNBUNDLED = "dtq-unbundled"
"""The throughput table's second dtq row: the leader publishes every dispatch on its own."""
SYSTEMS = ("dtq", UNBUNDLED, "celery", "dramatiq")
LABELS = {"dtq": "dtq", UNBUNDLED: "dtq --dispatch-bundle 1", "celery": "Celery",
          "dramatiq": "Dramatiq"}
NA = "n/a"


def label(name: str, r: Mapping[str, Any] | None = None) -> str:
    """A row's label: the system, and for dtq the flags its run set beyond the node defaults
    (none: "dtq"). Results written before runs recorded their flags keep the fixed labels."""
    given = (r or {}).get("flags")
    if given is None or name not in ("dtq", UNBUNDLED):
        return LABELS[name]
    return f"dtq {given}" if given else "dtq"
JSON_NAME, MD_NAME, PNG_NAME = "latest.json", "latest.md", "throughput.png"


# --- machine ----------------------------------------------------------------------------------


def machine(broker: str, store: str) -> dict[str, Any]:
    """Where and when the numbers were taken."""
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cores": os.cpu_count(), "cpu": _cpu_model(), "os": platform.platform(),
            "python": platform.python_version(), "rabbitmq": _rabbitmq_version(broker),
            "redis": _redis_version(store), "load_average": list(os.getloadavg()),
            "packages": {n: _version(n) for n in ("celery", "kombu", "dramatiq", "pika",
                                                  "redis", "py-spy")}}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _rabbitmq_version(url: str) -> str:
    import pika

    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            version = conn._impl.server_properties.get("version", "unknown")
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            conn.close()
    return "unknown"


def _redis_version(url: str) -> str:
    import redis

    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    return "unknown"


# --- Markdown ---------------------------------------------------------------------------------


def _f(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else str(value)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _machine_md(m: dict[str, Any]) -> list[str]:
    pk = m.get("packages", {})
    load = ", ".join(f"{x:.2f}" for x in m.get("load_average", []))
    return [f"Measured {m.get('date', '?')} on {m.get('cores', '?')} cores ({m.get('cpu', '?')})"
            f", {m.get('os', '?')}; Python {m.get('python', '?')}, RabbitMQ "
            f"{m.get('rabbitmq', '?')}, Redis {m.get('redis', '?')}; Celery "
            f"{pk.get('celery') or NA}, Dramatiq {pk.get('dramatiq') or NA}. "
            f"Load average at the start: {load or '?'}.", ""]


def _throughput_md(t: dict[str, Any]) -> list[str]:
    rows = []
    for name in SYSTEMS:
        r = t.get("systems", {}).get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append([label(name, r), NA, NA, f"not measured: {r['error']}"])
            continue
        under = (f"submitted in batches of 250; each task submit -> notice of its stored "
                 f"result, all queued at once: p50 {_f(r['p50_ms'])} ms, p99 "
                 f"{_f(r['p99_ms'])} ms"
                 if "p50_ms" in r else f"submitting took {_f(r.get('submit_s'), 2)} s")
        rows.append([label(name, r), _f(r["tasks_per_s"]), _f(r["elapsed_s"], 2), under])
    return [f"### Throughput: {t.get('tasks', 5000):,} no-op tasks, submitted -> result "
            f"available, {t.get('workers', 2)} worker processes each", "",
            *_table(["system", "tasks/s", "elapsed s", "notes"], rows)]


def _latency_md(lat: dict[str, Any]) -> list[str]:
    rows = [[label(n, r), _f(r["p50_ms"], 2), _f(r["p99_ms"], 2), _f(r["mean_ms"], 2),
             _f(r["max_ms"], 2)] if "error" not in r else [label(n, r), NA, NA, NA, r["error"]]
            for n in SYSTEMS if (r := lat.get("systems", {}).get(n)) is not None]
    turns = f", the systems taking turns of {lat['block']}" if lat.get("block") else ""
    return [f"### Single-task latency: {lat.get('n', 200)} sequential submit-and-wait{turns}", "",
            *_table(["system", "p50 ms", "p99 ms", "mean ms", "max ms"], rows)]


def _stages_md(s: dict[str, Any]) -> list[str]:
    from dtq.bench.stages import table

    return [f"### Where dtq's round trip goes: {s['stages']['round_trips']} marked sequential "
            "round trips", "", table(s), ""]


def _failover_md(f: dict[str, Any]) -> list[str]:
    row = [str(f["trials"]), _f(f["lease_ttl_ms"]), _f(f["takeover"]["p50_ms"]),
           _f(f["p50_ms"]), _f(f["p99_ms"]), _f(f["max_ms"]), "p99 ≤ 3,000"]
    return ["### Failover: leader SIGKILL -> first dispatch by the new leader", "",
            *_table(["trials", "lease ttl ms", "elected p50 ms", "p50 ms", "p99 ms", "max ms",
                     "target ms"], [row])]


def _reassign_md(r: dict[str, Any]) -> list[str]:
    det = r["detector_timeout_ms"]
    rows = [["worker SIGKILL -> task started on another worker", str(r["trials"]),
             _f(r["kill"]["p50_ms"], 1), _f(r["kill"]["p99_ms"], 1), _f(r["kill"]["max_ms"], 1),
             "(broker redelivery)"],
            [f"worker SIGSTOP -> `reassigned` by the leader (detector timeout {det:,} ms, "
             f"heartbeat {r['heartbeat_ms']} ms)", str(r["trials"]), _f(r["pause"]["p50_ms"]),
             _f(r["pause"]["p99_ms"]), _f(r["pause"]["max_ms"]), f"≤ {det + 1000:,}"]]
    return ["### Reassignment of a running task", "",
            *_table(["fault", "trials", "p50 ms", "p99 ms", "max ms", "target ms"], rows)]


def _sim_md(s: dict[str, Any]) -> list[str]:
    t, e = s["throughput"], s["explore"]
    rows = [[f"{t['tasks']:,} tasks, {t['messages']:,} messages", _f(t["messages_per_s"]),
             f"{_f(t['virtual_to_wall'], 1)}x", NA],
            [f"explore {e['scenario']}, {e['runs']} seeds", NA,
             f"{_f(e['virtual_to_wall'])}x", _f(e["seeds_per_s"], 1)]]
    return ["### Simulator (memory backend)", "",
            *_table(["run", "messages/s", "virtual-to-wall", "seeds/s"], rows)]


SCALING_CPU = (("leader", "leader"), ("workers", "workers (all)"), ("RabbitMQ", "RabbitMQ"),
               ("Redis", "Redis"), ("client", "client"))
"""The CPU columns of the scaling table: key in a run's "cpu_s_per_1k", and heading."""


def _scaling_runs(s: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(((w, r) for w, r in s.items() if w.isdigit() and "error" not in r),
                  key=lambda wr: int(wr[0]))


def _pct(share: float | None) -> str:
    return NA if share is None else f"{share:.0%}"


def scaling_table(s: dict[str, Any]) -> list[str]:
    """Throughput beside the CPU each process spent per 1,000 tasks and the leader's share of
    one core: as the share nears 100% the leader is the ceiling, whatever the worker count.
    Runs without CPU figures (older results) show n/a there."""
    rows = []
    for w, r in _scaling_runs(s):
        cpu = r.get("cpu_s_per_1k", {})
        figures = [_f(cpu.get(key), 2) for key, _ in SCALING_CPU]
        rows.append([w, _f(r["tasks_per_s"]), figures[0], _pct(r.get("leader_core")),
                     *figures[1:], _f(r.get("leader_bound_tasks_per_s")), _f(r["p50_ms"], 1),
                     _f(r["p99_ms"], 1)])
    cpu_heads = [f"{label} CPU s/1k tasks" for _, label in SCALING_CPU]
    head = ["workers", "tasks/s", cpu_heads[0], "leader % of a core", *cpu_heads[1:],
            "1 / leader CPU per task (tasks/s)", "p50 ms under load", "p99 ms under load"]
    return _table(head, rows)


def scaling_cpu_line(r: dict[str, Any]) -> str:
    """One run's CPU figures in a line (what `dtq bench scaling` prints as it goes)."""
    cpu = r.get("cpu_s_per_1k", {})
    parts = ", ".join(f"{label} {_f(cpu.get(key), 2)}" for key, label in SCALING_CPU)
    return (f"CPU s per 1,000 tasks: {parts}; leader {_pct(r.get('leader_core'))} of a core "
            f"(1 / leader CPU per task: {_f(r.get('leader_bound_tasks_per_s'))} tasks/s)")


def _scaling_md(s: dict[str, Any]) -> list[str]:
    runs = _scaling_runs(s)
    tasks = runs[0][1].get("tasks", 0) if runs else 0
    return [f"### dtq scaling: {tasks:,} no-op tasks by worker processes", "",
            "CPU from /proc over the run window (first submission to last result), per 1,000 "
            "tasks; the leader's share of one core is its CPU seconds over the window's.", "",
            *scaling_table(s)]


def _memory_md(m: dict[str, Any]) -> list[str]:
    row = [f"{m['tasks']:,}", _f(m["rss_before_kib"] / 1024, 1),
           _f(m["rss_after_kib"] / 1024, 1), _f(m["rss_peak_kib"] / 1024, 1),
           _f(m["bytes_per_task"]), _f(m["accepted_per_s"])]
    return ["### Coordinator memory: RSS of the leader holding every task (no workers)", "",
            *_table(["tasks", "RSS before MiB", "RSS after MiB", "peak MiB", "bytes/task",
                     "accepted/s"], [row])]


def _loads_md(results: dict[str, Any]) -> list[str]:
    steps = ("sim", "throughput", "latency", "stages", "failover", "reassign", "scaling", "memory",
             "profile")
    loads = [f"{key} {results[key]['load_average_before'][0]:.1f}" for key in steps
             if "load_average_before" in results.get(key, {})]
    return [f"One-minute load average before each step: {', '.join(loads)}.", ""] if loads else []


SECTIONS: list[tuple[str, Callable[[dict[str, Any]], list[str]]]] = [
    ("throughput", _throughput_md), ("latency", _latency_md), ("stages", _stages_md),
    ("failover", _failover_md),
    ("reassign", _reassign_md), ("sim", _sim_md), ("scaling", _scaling_md),
    ("memory", _memory_md)]


def markdown(results: dict[str, Any]) -> str:
    out = ["## dtq against the peers", "", *_machine_md(results.get("machine", {}))]
    for key, render in SECTIONS:
        section = results.get(key)
        if section is None:
            continue
        if "error" in section:
            out += [f"### {key}", "", f"Not measured: {section['error']}", ""]
            continue
        out += render(section)
    out += _loads_md(results)
    files = results.get("profile", {}).get("files", {})
    if files:
        out += ["### Profiles", "", *(f"* `{Path(p).name}` ({node})"
                                      for node, p in sorted(files.items())), ""]
    return "\n".join(out)


# --- chart ------------------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> Path:
    """Throughput, latency, dtq scaling and fault recovery in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    _bars_throughput(axes[0][0], results.get("throughput"))
    _bars_latency(axes[0][1], results.get("latency"))
    _line_scaling(axes[1][0], results.get("scaling"))
    _box_recovery(axes[1][1], results)
    fig.suptitle(f"dtq against the peers — {results.get('machine', {}).get('date', '')}, "
                 f"{results.get('machine', {}).get('cores', '?')} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ok(section: Any) -> dict[str, Any]:
    return {k: v for k, v in (section or {}).get("systems", {}).items() if "error" not in v}


def _empty(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _bars_throughput(ax: Any, t: Any) -> None:
    systems = _ok(t)
    if not systems:
        return _empty(ax, "throughput")
    names = [n for n in SYSTEMS if n in systems]
    values = [systems[n]["tasks_per_s"] for n in names]
    labels = [label(n, systems[n]).replace(" --", "\n--") for n in names]
    bars = ax.bar(labels, values, color=[f"C{SYSTEMS.index(n)}" for n in names])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_title(f"throughput, {t.get('tasks', 0):,} no-op tasks, {t.get('workers', 2)} workers")
    ax.set_ylabel("tasks/s")


def _bars_latency(ax: Any, lat: Any) -> None:
    systems = _ok(lat)
    if not systems:
        return _empty(ax, "latency")
    names = [n for n in SYSTEMS if n in systems]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [systems[n]["p50_ms"] for n in names], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [systems[n]["p99_ms"] for n in names], 0.4, label="p99")
    ax.set_xticks(list(xs), [label(n, systems[n]) for n in names])
    turns = f" in turns of {lat['block']}" if lat.get("block") else ""
    ax.set_title(f"single-task latency, {lat.get('n', 0)} sequential round trips{turns}")
    ax.set_ylabel("ms")
    ax.legend()


def _line_scaling(ax: Any, s: Any) -> None:
    rows = sorted((int(w), r["tasks_per_s"]) for w, r in (s or {}).items()
                  if w.isdigit() and "tasks_per_s" in r)
    if not rows:
        return _empty(ax, "dtq scaling")
    ax.plot([w for w, _ in rows], [v for _, v in rows], marker="o", label="measured")
    bound = sorted((int(w), r["leader_bound_tasks_per_s"]) for w, r in (s or {}).items()
                   if w.isdigit() and r.get("leader_bound_tasks_per_s"))
    if bound:
        ax.plot([w for w, _ in bound], [v for _, v in bound], linestyle="--", marker="x",
                label="1 / leader CPU per task")
        ax.legend()
    ax.set_xticks([w for w, _ in rows])
    ax.set_title("dtq throughput by worker processes")
    ax.set_xlabel("workers")
    ax.set_ylabel("tasks/s")
    ax.set_ylim(bottom=0)


def _box_recovery(ax: Any, results: dict[str, Any]) -> None:
    f, r = results.get("failover") or {}, results.get("reassign") or {}
    data, labels = [], []
    if "samples_ms" in f:
        data.append(f["samples_ms"])
        labels.append("leader\nSIGKILL")
    for key, label in (("kill", "worker\nSIGKILL"), ("pause", "worker\nSIGSTOP")):
        if "samples_ms" in r.get(key, {}):
            data.append(r[key]["samples_ms"])
            labels.append(label)
    if not data:
        return _empty(ax, "fault recovery")
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set_title("recovery time per trial")
    ax.set_ylabel("ms")


# --- files ------------------------------------------------------------------------------------


def write(results: dict[str, Any], out_dir: Path, *, png: bool = True) -> list[Path]:
    """latest.json, latest.md and (with matplotlib) throughput.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / JSON_NAME, out_dir / MD_NAME]
    written[0].write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    written[1].write_text(markdown(results))
    if png:
        written.append(chart(results, out_dir / PNG_NAME))
    return written


def load(out_dir: Path) -> dict[str, Any]:
    path = out_dir / JSON_NAME
    if not path.is_file():
        raise BenchError(f"no {path}: run `dtq bench all --out {out_dir}` first")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
