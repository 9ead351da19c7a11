"""Every JSON log line is written whole: several processes logging at once to one stderr (a pipe,
or a file opened for appending) never glue or split each other's lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4
LINES = 1000

_CHILD = """
import sys
import structlog
from dtq.runtime.logs import configure_logging

configure_logging("info")
log = structlog.get_logger("dtq").bind(process=int(sys.argv[1]))
for i in range(int(sys.argv[2])):
    log.info("line", n=i, pad="x" * int(sys.argv[3]))
"""


def _spawn(stderr: int, pad: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", _CHILD, str(p), str(LINES), str(pad)],
                             stderr=stderr, cwd=ROOT, env=env) for p in range(PROCESSES)]


def _check(text: str) -> None:
    lines = text.splitlines()
    parsed = [json.loads(line) for line in lines]  # a glued or split line fails to parse
    seen = {(d["process"], d["n"]) for d in parsed}
    assert len(lines) == PROCESSES * LINES == len(seen)


def _env(unbuffered: bool) -> dict[str, str]:
    env = {**os.environ, "DTQ_LOG_FORMAT": "json",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:  # as containers often run Python: each write reaches the descriptor at once
        env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.parametrize("unbuffered", [True, False])
def test_lines_from_several_processes_on_one_pipe_stay_whole(unbuffered: bool) -> None:
    read_end, write_end = os.pipe()
    procs = _spawn(write_end, 2000, _env(unbuffered))  # under PIPE_BUF with its JSON around
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()  # until every child has exited
    assert [p.wait() for p in procs] == [0] * PROCESSES
    _check(text)


def test_long_lines_appended_to_one_file_stay_whole(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        procs = _spawn(fd, 12_000, _env(True))  # lines over PIPE_BUF and the 8 KiB buffer
    finally:
        os.close(fd)
    assert [p.wait() for p in procs] == [0] * PROCESSES
    _check(path.read_text())
