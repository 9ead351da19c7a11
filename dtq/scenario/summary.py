"""The summary of a scenario run, on either backend: the JSON object (`summarize`: the checker's
verdict, the measured failovers and reassignments, the scenario's `[expect]` bounds), and the
table `dtq scenario run` prints from it (`summary_table`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dtq.checker import check
from dtq.history import Event, digest
from dtq.poison import expectation_texts, poison_summary, poison_violations, summary_lines
from dtq.scenario.model import Scenario


def summarize(
    scenario: Scenario, transport: str, seed: int, events: Sequence[Event], *,
    virtual_ms: int, wall_ms: int,
) -> dict[str, Any]:
    result = check(events)
    violations = [v.to_json() for v in result.violations]
    failover = failover_times(events)
    reassign = reassign_times(events)
    violations += _expectations(scenario, result.counts.to_json(), failover, reassign)
    violations += poison_violations(events, dead_lettered_min=scenario.expect.dead_lettered_min,
                                    crashes_max=scenario.expect.crashes_max)
    want_refused = scenario.expect.stale_writes_refused_min
    if want_refused is not None and result.stale_writes[0] < want_refused:
        violations.append({"invariant": "expectation",
                           "detail": f"expected at least {want_refused} stale write(s) to be "
                                     f"attempted and refused, saw {result.stale_writes[0]}"})
    return {
        "scenario": scenario.name, "transport": transport, "seed": seed,
        "ok": not violations, "tasks": result.counts.to_json(), "violations": violations,
        "leaders": [{"epoch": e, "actor": a} for e, a in result.leaders],
        "failover_ms": failover, "reassign_ms": reassign,
        "stale_writes": {"attempted": result.stale_writes[0],
                         "accepted": result.stale_writes[1]},
        "causality": result.causality,
        "once": result.once.to_json(),
        "history_digest": digest(events), "virtual_ms": virtual_ms, "wall_ms": wall_ms,
        "failures": failure_reasons(events),
        **poison_summary(events),
    }


MAX_FAILURES_LISTED = 20
"""A summary names the first this many failed tasks and their reasons (the counts say how many)."""


def failure_reasons(events: Sequence[Event]) -> list[dict[str, str]]:
    """The first `MAX_FAILURES_LISTED` tasks that failed (or were rejected), with the reason
    their record gives, in the order they ended."""
    out: dict[str, str] = {}
    for e in events:
        if len(out) >= MAX_FAILURES_LISTED:
            break
        if e.kind in ("failed", "rejected") and e.data.get("task") not in out:
            out[str(e.data.get("task"))] = str(e.data.get("reason") or e.kind)
    return [{"task": task, "reason": reason} for task, reason in out.items()]


def failure_lines(summary: Mapping[str, Any], shown: int = 5) -> list[str]:
    """The scenario table's lines on failed tasks: how many, then some of them and why."""
    failures = summary.get("failures") or []
    if not failures:
        return []
    total = summary["tasks"].get("failed", len(failures))
    lines = [f"  failures  {total} task{'s' if total != 1 else ''} failed"]
    lines += [f"    {f['task']}: {f['reason']}" for f in failures[:shown]]
    if total > shown:
        lines.append(f"    ... {total - shown} more (--json lists the first "
                     f"{MAX_FAILURES_LISTED})")
    return lines


def _expectations(
    scenario: Scenario, counts: dict[str, int], failover: list[int], reassign: list[int],
) -> list[dict[str, Any]]:
    """The scenario's own `[expect]` bounds, each violation explained in plain words."""
    ex = scenario.expect
    out = [_count_violation(key, want, counts) for key in ("succeeded", "failed")
           if (want := getattr(ex, key)) is not None and counts[key] != want]
    if ex.failover_ms_max is not None and any(f > ex.failover_ms_max for f in failover):
        out.append({"invariant": "failover_bound", "detail": (
            f"after the leader was lost, {max(failover)} ms passed before a new leader acted, "
            f"but [expect] failover_ms_max allows {ex.failover_ms_max} ms (measured: "
            f"{failover}). A standby can take over only when the old leader's lease has "
            f"expired, so a failover takes about cluster.lease_ttl_ms "
            f"({scenario.cluster.lease_ttl_ms} ms) plus a standby's next try")})
    if ex.reassign_ms_max is not None and any(r > ex.reassign_ms_max for r in reassign):
        out.append({"invariant": "reassign_bound", "detail": (
            f"a task held by a crashed or frozen worker waited {max(reassign)} ms before "
            f"another worker started it, but [expect] reassign_ms_max allows "
            f"{ex.reassign_ms_max} ms (measured: {reassign}). A killed worker's tasks come "
            f"back when its connection closes; a frozen worker's only when the failure "
            f"detector (or the broker's heartbeat) gives up on it")})
    return out


def _count_violation(key: str, want: int, counts: dict[str, int]) -> dict[str, Any]:
    got = counts[key]
    why = []
    if counts["lost"]:
        why.append(f"{counts['lost']} never finished before the deadline")
    other = "failed" if key == "succeeded" else "succeeded"
    if counts[other]:
        why.append(f"{counts[other]} {other}")
    because = f" ({', '.join(why)})" if why else ""
    return {"invariant": "expectation",
            "detail": f"[expect] {key} = {want}, but {got} of {counts['submitted']} submitted "
                      f"tasks {key}{because}"}


def failover_times(events: Sequence[Event]) -> list[int]:
    """For each crash of the acting leader: time until the next leader's first dispatch (or,
    with nothing to dispatch, until it took over)."""
    out = []
    leader = None
    for i, e in enumerate(events):
        if e.kind == "leader":
            leader = e.actor
        elif e.kind in ("crash", "abdicated") and e.actor == leader:
            leader = None
            took = _next_takeover(events, i)
            if took is not None:
                out.append(took - e.time_ms)
    return out


def _next_takeover(events: Sequence[Event], start: int) -> int | None:
    new_leader, took_ms = None, None
    for e in events[start + 1:]:
        if new_leader is None and e.kind == "leader":
            new_leader, took_ms = e.actor, e.time_ms
        elif new_leader is not None and e.actor == new_leader and e.kind == "dispatched":
            return e.time_ms
    return took_ms


def running_tasks(events: Sequence[Event]) -> dict[str, dict[str, int]]:
    """Actor -> the tasks it started and has not ended (when each started), at the end of
    `events` (a crash or restart of the actor forgets its tasks)."""
    running: dict[str, dict[str, int]] = {}
    for e in events:
        _track(running.setdefault(e.actor, {}), e)
    return running


def _track(tasks: dict[str, int], e: Event) -> None:
    if e.kind == "started":
        tasks[e.data["task"]] = e.time_ms
    elif e.kind in ("effect", "duplicate_refused", "attempt_failed"):
        tasks.pop(e.data["task"], None)
    elif e.kind in ("crash", "restart", "worker_started"):
        tasks.clear()


def reassign_times(events: Sequence[Event]) -> list[int]:
    """For each task held by a worker when it crashed or froze: time until the task was handed
    on — the leader re-dispatched it, or another worker started it (after a redelivery)."""
    out = []
    running: dict[str, dict[str, int]] = {}
    for i, e in enumerate(events):
        tasks = running.setdefault(e.actor, {})
        if e.kind == "started":
            tasks[e.data["task"]] = e.time_ms
        elif e.kind in ("effect", "duplicate_refused", "attempt_failed"):
            tasks.pop(e.data["task"], None)
        elif e.kind in ("crash", "pause") and tasks:
            for task in sorted(tasks):
                when = _started_elsewhere(events, i, task, e.actor)
                if when is not None:
                    out.append(when - e.time_ms)
            tasks.clear()
    return out


def _started_elsewhere(events: Sequence[Event], start: int, task: str, actor: str) -> int | None:
    for e in events[start + 1:]:
        if e.data.get("task") != task:
            continue
        if e.kind == "reassigned" or (e.kind in ("started", "already_done") and e.actor != actor):
            return e.time_ms
    return None


# --- the table ---------------------------------------------------------------------------------

_CHECKS = (("no lost task", ("no_lost_task",)), ("no duplicate effect", ("no_duplicate_effect",)),
           ("one outcome per task", ("single_outcome",)),
           ("no unexpected task", ("no_unexpected_task",)),
           ("one leader per epoch", ("one_leader_per_epoch", "epochs_grow")),
           ("no stale write", ("no_stale_write",)),
           ("dependency order", ("dependency_order", "causal_delivery", "causality_detected")),
           ("failover bound", ("failover_bound",)),
           ("reassign bound", ("reassign_bound",)), ("expectations", ("expectation",)))


def summary_table(scenario: Scenario, summary: dict[str, Any]) -> list[str]:
    """The human end of `dtq scenario run`: a verdict, one row per check, the numbers, and why
    any check failed."""
    failed = {v["invariant"] for v in summary["violations"]}
    known = {name for _, names in _CHECKS for name in names}
    rows = [(label, _result(label, names, failed, scenario), _measured(label, scenario, summary))
            for label, names in _CHECKS]
    rows += [(name.replace("_", " "), "FAILED", "") for name in sorted(failed - known)]
    verdict = "OK: every check held" if summary["ok"] else f"FAILED: {len(failed)} check(s) broke"
    t = summary["tasks"]
    lines = [f"{summary['scenario']} on {summary['transport']} (seed {summary['seed']}): "
             f"{verdict}", "", f"  {'check':<22}{'result':<8}measured"]
    lines += [f"  {label:<22}{result:<8}{measured}".rstrip() for label, result, measured in rows]
    lines += ["", "  tasks    " + ", ".join(f"{k} {v}" for k, v in t.items()),
              f"  time     {summary['virtual_ms']} ms of run"
              f"{' (virtual)' if summary['transport'] == 'memory' else ''}, "
              f"{summary['wall_ms']} ms wall",
              f"  history  {summary['history_digest']}"]
    lines += failure_lines(summary)
    lines += summary_lines(summary)
    if summary["violations"]:
        lines += ["", "why:"] + [f"  {v['invariant']}: {v['detail']}"
                                 for v in summary["violations"]]
    return lines


def _result(label: str, names: tuple[str, ...], failed: set[str], scenario: Scenario) -> str:
    if failed & set(names):
        return "FAILED"
    ex = scenario.expect
    bounds = {"failover bound": ex.failover_ms_max, "reassign bound": ex.reassign_ms_max,
              "expectations": next((x for x in (ex.succeeded, ex.failed,
                                                ex.stale_writes_refused_min,
                                                ex.dead_lettered_min, ex.crashes_max)
                                     if x is not None),
                                   None)}
    return "-" if label in bounds and bounds[label] is None else "ok"


def _measured(label: str, scenario: Scenario, s: dict[str, Any]) -> str:
    t, ex = s["tasks"], scenario.expect
    stale = s.get("stale_writes") or {}

    def bound(values: list[int], limit: int | None) -> str:
        got = f"{max(values)} ms" if values else "none measured"
        return f"{got} (allowed {limit} ms)" if limit is not None else f"{got} (no bound set)"

    wanted = [f"{k} {t[k]} (expected {getattr(ex, k)})" for k in ("succeeded", "failed")
              if getattr(ex, k) is not None]
    if ex.stale_writes_refused_min is not None:
        wanted.append(f"stale writes refused {stale.get('attempted', 0)} "
                      f"(expected at least {ex.stale_writes_refused_min})")
    wanted += expectation_texts(s, ex.dead_lettered_min, ex.crashes_max)
    causal = s.get("causality") or {}
    measured = {
        "no lost task": f"{t['submitted'] - t['lost']} of {t['submitted']} submitted finished",
        "no duplicate effect": f"{t['duplicated']} applied twice",
        "one leader per epoch": " -> ".join(f"{x['actor']} ({x['epoch']})"
                                             for x in s["leaders"]),
        "no stale write": (f"{stale.get('attempted', 0)} refused, "
                           f"{stale.get('accepted', 0)} accepted") if stale else "",
        "dependency order": (f"{causal.get('detected', 0)} of {causal.get('provoked', 0)} "
                             f"provoked causality problems caught") if causal.get("provoked")
                            else "",
        "failover bound": bound(s["failover_ms"], ex.failover_ms_max),
        "reassign bound": bound(s["reassign_ms"], ex.reassign_ms_max),
        "expectations": ", ".join(wanted),
    }
    return measured.get(label, "")
