"""A soak: a steady mixed load on a real cluster for a set time, with kills, sampled and accounted.

`dtq bench soak --minutes 15` runs what an operator runs (`dtq cluster`'s shape: two
coordinators and three workers with their defaults) in a namespace of its own, with the
retention of finished tasks set to a few minutes, and for the whole duration:

* submits `rate` tasks a second in batches every 0.25 s: echo and short sleeps (5-50 ms), and
  one 5-task DAG chain per batch;
* SIGKILLs a worker every 45 s (in turn) and the leader every 3 minutes from 2.5 minutes in,
  restarting each at once, and freezes one worker for 20 s a third of the way in;
* samples every 30 s each node's RSS, Redis's memory, the namespace's keys and bytes, and the
  depths of the leader's and the work queue.

Then it waits for the tasks still in flight and accounts for every submission from the notices
its client heard: succeeded, failed, never notified (and of those, how many have no finished
record: lost), duplicated notices; latency (submit -> notice) per minute of submission; each
leader kill's recovery (kill -> the lease held by another coordinator). A benchmark: it prints
numbers and asserts none.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import attrs

from dtq.bench.cluster import Cluster, dtq_cluster
from dtq.bench.common import queue_counts, rss_kib
from dtq.bench.real import percentile
from dtq.envelope import COORDINATOR_QUEUE, WORK_QUEUE, Finished
from dtq.store import LEADER_LEASE
from dtq.task import TaskSpec
from dtq.transport import queue_name

TICK_S = 0.25
SAMPLE_S = 30.0
WORKER_KILL_S = 45.0
LEADER_KILL_S = 180.0
FIRST_LEADER_KILL_S = 150.0
"""The first leader kill; then one every LEADER_KILL_S (5 in 15 minutes)."""
PAUSE_S = 20.0
CHAIN = 5


@attrs.define
class _Ledger:
    """Submissions and the notices heard, from two threads."""

    submitted: dict[str, float] = attrs.field(factory=dict)
    heard: dict[str, tuple[float, str]] = attrs.field(factory=dict)
    notices: Counter[str] = attrs.field(factory=Counter)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def hear(self, f: Finished) -> None:
        with self.lock:
            self.notices[f.task_id] += 1
            self.heard.setdefault(f.task_id, (time.monotonic(), f.state))

    def sent(self, specs: list[TaskSpec], at: float) -> None:
        with self.lock:
            self.submitted.update((s.id, at) for s in specs)

    def open(self) -> int:
        with self.lock:
            return len(self.submitted.keys() - self.heard.keys())


def _batch(n: int, seq: int, rng: random.Random) -> list[TaskSpec]:
    """`n` tasks: one DAG chain of CHAIN, the rest echo and short sleeps."""
    chain = [TaskSpec(id=f"d{seq:07d}-{i}", type="echo", payload={"message": i},
                      deps=(f"d{seq:07d}-{i - 1}",) if i else ()) for i in range(CHAIN)]
    rest = [TaskSpec(id=f"t{seq:07d}-{i}", type="sleep", payload={"ms": rng.randint(5, 50)})
            if i % 4 == 0 else TaskSpec(id=f"t{seq:07d}-{i}", type="echo", payload={"n": i})
            for i in range(max(0, n - CHAIN))]
    return chain + rest


class _Soak:
    def __init__(self, c: Cluster, minutes: float, rate: int) -> None:
        self.c, self.minutes, self.rate = c, minutes, rate
        self.ledger = _Ledger()
        self.start = time.monotonic()
        self.end = self.start + minutes * 60
        self.samples: list[dict[str, Any]] = []
        self.leader_kills: list[dict[str, Any]] = []
        self.worker_kills = 0
        self.rng = random.Random(1)

    def run(self) -> dict[str, Any]:
        submitter = self.c.submitter(on_finished=self.ledger.hear)
        loader = threading.Thread(target=self._load, args=(submitter,), name="soak-load",
                                  daemon=True)
        loader.start()
        try:
            self._operate()
            loader.join(30)
            settle_until = time.monotonic() + 120
            while self.ledger.open() and time.monotonic() < settle_until:
                self.c.sup.poll()
                time.sleep(0.5)  # the remaining ends come from the cluster, heard as notices
            self._sample()
        finally:
            submitter.close()
        return self._account()

    # --- load and faults --------------------------------------------------------------------

    def _load(self, submitter: Any) -> None:
        seq, next_at = 0, time.monotonic()
        per_tick = max(CHAIN + 1, round(self.rate * TICK_S))
        while next_at < self.end:
            specs = _batch(per_tick, seq, self.rng)
            self.ledger.sent(specs, time.monotonic())
            submitter.submit(specs)
            seq += 1
            next_at += TICK_S
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _operate(self) -> None:
        """Kills, the pause and samples on their schedules, the supervisor polled between."""
        workers = self.c.workers()
        next_worker_kill = self.start + WORKER_KILL_S
        next_leader_kill = self.start + FIRST_LEADER_KILL_S
        next_sample = self.start
        pause_at = self.start + self.minutes * 20  # a third of the way in
        paused: tuple[str, float] | None = None
        while time.monotonic() < self.end:
            now = time.monotonic()
            if now >= next_sample:
                self._sample()
                next_sample += SAMPLE_S
            if now >= next_worker_kill:
                victim = workers[self.worker_kills % len(workers)]
                self.c.sup.kill(victim)
                self.c.sup.restart(victim)
                self.worker_kills += 1
                next_worker_kill += WORKER_KILL_S
            if now >= next_leader_kill:
                self._kill_leader()
                next_leader_kill += LEADER_KILL_S
            if paused is None and now >= pause_at:
                paused = (workers[-1], now)
                self.c.sup.pause(workers[-1])
            elif paused is not None and paused[1] and now - paused[1] >= PAUSE_S:
                self.c.sup.resume(paused[0])
                paused = (paused[0], 0.0)
            self.c.sup.poll()
            time.sleep(0.05)  # the operator's step; every measurement is read, not timed here

    def _kill_leader(self) -> None:
        """Kill the leader and restart it at once; recovered when a lease of a newer epoch is
        held (by the standby, or by the restarted node if it wins the race)."""
        held = self.c.store.lease(LEADER_LEASE)
        if held is None:
            return
        leader = held.holder
        killed = time.monotonic()
        self.c.sup.kill(leader)
        self.c.sup.restart(leader)
        while time.monotonic() - killed < 30:
            lease = self.c.store.lease(LEADER_LEASE)
            if lease is not None and lease.epoch > held.epoch:
                self.leader_kills.append({"killed": leader, "new": lease.holder,
                                          "recovery_ms": (time.monotonic() - killed) * 1000})
                return
            self.c.sup.poll()
            time.sleep(0.01)
        self.leader_kills.append({"killed": leader, "new": None, "recovery_ms": None})

    # --- measurement ------------------------------------------------------------------------

    def _sample(self) -> None:
        info = self.c.store.client.info("memory")
        ns = self.c.store.report()
        leader = self.c.leader()
        rss = {}
        for name in self.c.sup.nodes:
            pid = self.c.sup.pid(name)
            if pid is not None and self.c.sup.alive(name):
                rss[name] = rss_kib(pid)
        with self.ledger.lock:
            submitted, heard = len(self.ledger.submitted), len(self.ledger.heard)
        self.samples.append({
            "t_s": round(time.monotonic() - self.start), "leader": leader,
            "leader_rss_kib": rss.get(leader or "", 0),
            "worker_rss_kib_max": max((v for k, v in rss.items() if k.startswith("worker")),
                                      default=0),
            "redis_used_bytes": int(info["used_memory"]), "ns_keys": ns["keys"],
            "ns_bytes": ns["bytes"], "records": sum(ns["records"].values()),
            "coordinator_queue": queue_counts(self.c.broker, queue_name(
                self.c.namespace, COORDINATOR_QUEUE))[0],
            "work_queue": queue_counts(self.c.broker, queue_name(self.c.namespace,
                                                                 WORK_QUEUE))[0],
            "submitted": submitted, "notified": heard})

    def _account(self) -> dict[str, Any]:
        led = self.ledger
        states = Counter(state for _, state in led.heard.values())
        missing = sorted(led.submitted.keys() - led.heard.keys())
        lost = [t for t in missing if not _finished(self.c, t)]
        by_minute: dict[int, list[float]] = defaultdict(list)
        for task, (heard_at, _) in led.heard.items():
            sent = led.submitted.get(task)
            if sent is not None:
                by_minute[int((sent - self.start) // 60)].append((heard_at - sent) * 1000)
        return {
            "minutes": self.minutes, "rate": self.rate, "submitted": len(led.submitted),
            "succeeded": states.get("succeeded", 0), "failed": states.get("failed", 0),
            "other_ends": {k: v for k, v in states.items() if k not in ("succeeded", "failed")},
            "never_notified": len(missing), "lost": len(lost), "lost_ids": lost[:20],
            "duplicated_notices": sum(1 for n in led.notices.values() if n > 1),
            "leader_kills": self.leader_kills, "worker_kills": self.worker_kills,
            "latency_by_minute": [
                {"minute": m, "tasks": len(v), "p50_ms": percentile(v, 50),
                 "p99_ms": percentile(v, 99)} for m, v in sorted(by_minute.items())],
            "samples": self.samples, "growth": _growth(self.samples)}


def _finished(c: Cluster, task_id: str) -> bool:
    rec = c.store.get_task(task_id)
    return rec is not None and rec.state.terminal


def _growth(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Change (%) of leader RSS and Redis memory from the first sample after warm-up (a third
    of the run) to the last one."""
    warm = samples[len(samples) // 3:]
    if len(warm) < 2:
        return {}
    out = {}
    for key in ("leader_rss_kib", "redis_used_bytes", "ns_bytes"):
        first, last = warm[0][key], warm[-1][key]
        out[key] = round(100.0 * (last - first) / first, 1) if first else float("nan")
        out[key + "_max_over_first"] = round(
            100.0 * (max(s[key] for s in warm) - first) / first, 1) if first else float("nan")
    return out


def soak(minutes: float = 15, rate: int = 160, retention_s: int = 180) -> dict[str, Any]:
    """Run the soak (see the module docstring); the accounting as a dict, printed as tables."""
    with dtq_cluster("soak", coordinators=2, workers=3) as c:
        c.store.set_retention_ms(retention_s * 1000)
        result = _Soak(c, minutes, rate).run()
    result["retention_s"] = retention_s
    _print(result)
    return result


def _print(r: dict[str, Any]) -> None:
    print(f"soak: {r['minutes']} min at {r['rate']} tasks/s, retention {r['retention_s']} s; "
          f"submitted {r['submitted']:,}, succeeded {r['succeeded']:,}, failed {r['failed']}, "
          f"never notified {r['never_notified']} (lost {r['lost']}), duplicated notices "
          f"{r['duplicated_notices']}; {len(r['leader_kills'])} leader kills, "
          f"{r['worker_kills']} worker kills")
    for k in r["leader_kills"]:
        rec = k["recovery_ms"]
        print(f"  leader kill {k['killed']} -> {k['new']}: "
              + (f"{rec:,.0f} ms" if rec is not None else "no new leader within 30 s"))
    print("  t(s)  leader RSS MiB  worker RSS MiB  Redis MiB  ns keys  ns KiB  records  "
          "coord q  work q  submitted  notified")
    for s in r["samples"]:
        print(f"  {s['t_s']:>4}  {s['leader_rss_kib'] / 1024:>14.1f}  "
              f"{s['worker_rss_kib_max'] / 1024:>14.1f}  {s['redis_used_bytes'] / 2**20:>9.1f}"
              f"  {s['ns_keys']:>7}  {s['ns_bytes'] / 1024:>6.0f}  {s['records']:>7}  "
              f"{s['coordinator_queue']:>7}  {s['work_queue']:>6}  {s['submitted']:>9}  "
              f"{s['notified']:>8}")
    print(f"  growth after warm-up (%): {r['growth']}")
    print("  minute  tasks  p50 ms  p99 ms")
    for m in r["latency_by_minute"]:
        print(f"  {m['minute']:>6}  {m['tasks']:>5}  {m['p50_ms']:>6.0f}  {m['p99_ms']:>6.0f}")
