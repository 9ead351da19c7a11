"""`dtq bench api`: `POST /tasks` against a no-op FastAPI endpoint, side by side in one run.

Two servers, started by the benchmark, served by uvicorn exactly as `dtq api` serves (one
process, `uvicorn.run(app, host, port, log_level="info")`):

* the no-op: one `async def` POST endpoint answering a small JSON (`{"id": ..., "state": ...}`),
  no middleware: the ceiling for any FastAPI endpoint on this machine;
* `dtq api` itself (a subprocess, as an operator runs it, with a bearer token), in front of a
  real cluster in a namespace of its own (one coordinator and `workers` workers with `dtq
  cluster`'s node defaults), every answer a task the broker confirmed.

Both are driven by the same load generator with the same body (`{"type": "echo", "payload":
{}}`) at each concurrency (50 and 200 clients by default) for `requests` requests, alternating
no-op, dtq, no-op, dtq (`rounds` times), so the machine's other load falls on both alike; each
measurement is preceded by a short warm-up. The load generator is ApacheBench (`ab -k`, from
apache2-utils: `apt-get install apache2-utils`) when it is on PATH, else a Python generator
(asyncio and httpx, keep-alive connections) in a process of its own; the output says which.

Then it checks durability: every request dtq answered 202 must be a task the leader recorded
in the store; it waits for the namespace's task count to reach the number of 202 answers and
prints both. A benchmark: it prints numbers and asserts none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from dtq.bench.cluster import dtq_cluster
from dtq.bench.common import BenchError, await_value
from dtq.bench.real import percentile
from dtq.runtime.process import store_url

BODY = {"type": "echo", "payload": {}}
WARMUP = 200
CONCURRENCY = (50, 200)


@attrs.frozen
class Load:
    """One measurement: requests answered 2xx, per second, and latency."""

    requests: int
    ok: int
    per_s: float
    p50_ms: float
    p99_ms: float
    tool: str
    cpu_ms: float = float("nan")
    """The server process's CPU time (user + system) per request."""


# --- the servers ----------------------------------------------------------------------------


def noop_app() -> Any:
    """A FastAPI app with one no-op POST endpoint (the baseline)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    n = 0

    @app.post("/tasks", status_code=202)
    async def noop() -> JSONResponse:
        nonlocal n
        n += 1
        return JSONResponse({"id": f"t-{n:024x}", "state": "submitted"}, status_code=202)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app


def _serve_noop(port: int) -> None:
    import uvicorn

    uvicorn.run(noop_app(), host="127.0.0.1", port=port, log_level="info")  # as `dtq api`


def cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool | None:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200 or None
    except httpx.HTTPError:
        return None


@contextlib.contextmanager
def _server(argv: Sequence[str], port: int, what: str, log: Path) -> Iterator[int]:
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=out, env=os.environ.copy())
        try:
            def up() -> bool | None:
                if proc.poll() is not None:
                    raise BenchError(f"{what} exited with {proc.returncode}: "
                                     f"{log.read_text()[-2000:]}")
                return _healthy(port)

            await_value(up, 60, what)
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- load generators --------------------------------------------------------------------------


def run_ab(url: str, body_file: Path, token: str | None, n: int, c: int) -> Load:
    """ApacheBench: `n` POSTs of `body_file`, `c` at a time, on keep-alive connections."""
    argv = ["ab", "-q", "-k", "-n", str(n), "-c", str(c), "-p", str(body_file),
            "-T", "application/json"]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BenchError(f"ab failed: {done.stderr.strip()[-500:]}")
    return parse_ab(done.stdout)


def parse_ab(out: str) -> Load:
    def number(pattern: str, default: float | None = None) -> float:
        m = re.search(pattern, out, re.M)
        if m is None:
            if default is None:
                raise BenchError(f"ab's output has no {pattern!r}:\n{out[-1500:]}")
            return default
        return float(m.group(1))

    complete = int(number(r"^Complete requests:\s+(\d+)"))
    # ab counts an answer whose length differs from the first's as failed: not an error here
    failed = sum(int(number(rf"{kind}: (\d+)", 0)) for kind in ("Connect", "Receive",
                                                               "Exceptions"))
    non2xx = int(number(r"^Non-2xx responses:\s+(\d+)", 0))
    return Load(requests=complete, ok=complete - non2xx - failed,
                per_s=number(r"^Requests per second:\s+([\d.]+)"),
                p50_ms=number(r"^\s+50%\s+(\d+)"), p99_ms=number(r"^\s+99%\s+(\d+)"),
                tool="ab")


async def _python_load(url: str, token: str | None, n: int, c: int) -> dict[str, Any]:
    import httpx

    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps(BODY).encode()
    latencies: list[float] = []
    ok = 0
    left = n
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal left, ok
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            r = await http.post(url, content=body, headers=headers)
            latencies.append((time.perf_counter() - t0) * 1000)
            ok += 200 <= r.status_code < 300

    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(c)))
        elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "ok": ok, "per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "tool": "python"}


def run_python(url: str, token: str | None, n: int, c: int) -> Load:
    """The Python generator, in a process of its own (not sharing this one's interpreter)."""
    argv = [sys.executable, "-m", "dtq.bench.api", "load", url, str(n), str(c)]
    env = {**os.environ, "DTQ_BENCH_TOKEN": token or ""}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    if done.returncode != 0:
        raise BenchError(f"the load generator failed: {done.stderr.strip()[-500:]}")
    return Load(**json.loads(done.stdout.strip().splitlines()[-1]))


# --- the benchmark --------------------------------------------------------------------------


def api_bench(
    requests: int = 5000, concurrency: Sequence[int] = CONCURRENCY, rounds: int = 2,
    workers: int = 1, tool: str | None = None,
) -> dict[str, Any]:
    """Measure both servers at each concurrency; print the table; the numbers."""
    tool = tool or ("ab" if shutil.which("ab") else "python")
    if tool == "ab" and not shutil.which("ab"):
        raise BenchError("ab is not on PATH (apt-get install apache2-utils), or pass --tool "
                         "python")
    print(f"load generator: {'ApacheBench (ab -k)' if tool == 'ab' else 'Python (asyncio + httpx)'}"
          f"; {requests} requests per measurement, {rounds} round(s) each, alternating",
          flush=True)
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="dtq-bench-api-") as tmp, \
            dtq_cluster("api", coordinators=1, workers=workers) as cluster:
        folder = Path(tmp)
        body_file = folder / "body.json"
        body_file.write_text(json.dumps(BODY))
        token_file = folder / "tokens"
        token_file.write_text(token + "\n")
        noop_port, dtq_port = free_port(), free_port()
        noop_argv = [sys.executable, "-m", "dtq.bench.api", "noop", str(noop_port)]
        dtq_argv = [sys.executable, "-m", "dtq.cli.main", "api", "--port", str(dtq_port),
                    "--namespace", cluster.namespace, "--token-file", str(token_file),
                    "--broker-url", cluster.broker, "--store-url", store_url(),
                    "--log-level", "info"]
        with _server(noop_argv, noop_port, "the no-op server", folder / "noop.log") as noop_pid, \
                _server(dtq_argv, dtq_port, "dtq api", folder / "api.log") as dtq_pid:
            targets = {"noop": (f"http://127.0.0.1:{noop_port}/tasks", None, noop_pid),
                       "dtq": (f"http://127.0.0.1:{dtq_port}/tasks", token, dtq_pid)}

            def measure(name: str, n: int, c: int) -> Load:
                url, bearer, pid = targets[name]
                before = cpu_s(pid)
                if tool == "ab":
                    load = run_ab(url, body_file, bearer, n, c)
                else:
                    load = run_python(url, bearer, n, c)
                spent = cpu_s(pid) - before
                return attrs.evolve(load, cpu_ms=spent * 1000 / max(load.requests, 1))

            rows = []
            answered = 0
            for c in concurrency:
                for name in targets:  # warm-up, not counted (but its tasks are)
                    answered += measure(name, min(WARMUP, requests), c).ok * (name == "dtq")
                runs: dict[str, list[Load]] = {"noop": [], "dtq": []}
                for _ in range(rounds):
                    for name in targets:
                        load = measure(name, requests, c)
                        runs[name].append(load)
                        answered += load.ok * (name == "dtq")
                rows.append(_row(c, runs))
        stored = _stored(cluster.store, answered)
    result = {"tool": tool, "requests": requests, "rounds": rounds, "workers": workers,
              "rows": rows, "answered_202": answered, "in_store": stored}
    print(table(result), flush=True)
    return result


def _row(c: int, runs: dict[str, list[Load]]) -> dict[str, Any]:
    noop = sum(r.per_s for r in runs["noop"]) / len(runs["noop"])
    dtq = sum(r.per_s for r in runs["dtq"]) / len(runs["dtq"])
    def cpu(name: str) -> float:
        return sum(r.cpu_ms for r in runs[name]) / len(runs[name])

    return {"concurrency": c, "noop_per_s": noop, "dtq_per_s": dtq,
            "noop_cpu_ms": cpu("noop"), "dtq_cpu_ms": cpu("dtq"),
            "ratio": dtq / noop if noop else float("nan"),
            "dtq_p50_ms": sum(r.p50_ms for r in runs["dtq"]) / len(runs["dtq"]),
            "dtq_p99_ms": max(r.p99_ms for r in runs["dtq"]),
            "non_2xx": sum(r.requests - r.ok for rs in runs.values() for r in rs)}


def _stored(store: Any, answered: int, timeout_s: float = 60) -> int:
    """Tasks recorded in the namespace, once they reach `answered` (or the timeout passes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = sum(store.count_by_state().values())
        if count >= answered or time.monotonic() > deadline:
            return int(count)
        time.sleep(0.2)


def table(result: dict[str, Any]) -> str:
    lines = ["| clients | no-op req/s | dtq req/s | ratio | dtq p50 ms | dtq p99 ms | "
             "CPU ms/request no-op, dtq | non-2xx |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['concurrency']} | {r['noop_per_s']:,.0f} | {r['dtq_per_s']:,.0f} | "
                     f"{r['ratio']:.2f} | {r['dtq_p50_ms']:.1f} | {r['dtq_p99_ms']:.1f} | "
                     f"{r['noop_cpu_ms']:.2f}, {r['dtq_cpu_ms']:.2f} | {r['non_2xx']} |")
    lines.append(f"durable: {result['in_store']:,} of {result['answered_202']:,} tasks answered "
                 "202 are recorded in the store")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """`python -m dtq.bench.api noop PORT` (the baseline server) or `... load URL N C` (the
    Python load generator, printing one JSON line; the token from $DTQ_BENCH_TOKEN)."""
    if argv[:1] == ["noop"]:
        _serve_noop(int(argv[1]))
        return 0
    if argv[:1] == ["load"]:
        url, n, c = argv[1], int(argv[2]), int(argv[3])
        print(json.dumps(asyncio.run(_python_load(url, os.environ.get("DTQ_BENCH_TOKEN") or None,
                                                  n, c))))
        return 0
    print("usage: python -m dtq.bench.api noop PORT | load URL N C", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
