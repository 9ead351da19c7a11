"""The Python client and the `dtq` client commands, against the API over a simulated cluster."""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx
import pytest

from dtq.cli import client as cli_client
from dtq.cli.main import build_parser
from dtq.client.http import (
    ApiError,
    ApiUnreachable,
    Client,
    Conflict,
    InProcessTransport,
    InvalidRequest,
    NotFound,
    ServerError,
    TaskFailed,
    Unavailable,
    WaitTimeout,
)
from dtq.errors import ConflictError, DtqError
from dtq.task import id_for_key

from ..api.test_api_kit import TOKEN, Api, make_api


@pytest.fixture
def api() -> Api:
    return make_api()


@pytest.fixture
def paused() -> Api:
    return make_api(autorun=False)


# --- the client ----------------------------------------------------------------------------------


def test_submit_wait_and_read_a_result(api: Api) -> None:
    c = api.client
    tid = c.submit("echo", {"message": "hi"}, priority=3, metadata={"team": "x"})
    record = c.wait(tid, timeout_s=5)
    assert record["state"] == "succeeded" and record["spec"]["priority"] == 3
    assert c.result(tid) == {"message": "hi"}
    assert c.get(tid)["spec"]["metadata"] == {"team": "x"}
    assert c.result_body(tid)["worker"].startswith("worker-")


def test_an_idempotency_key_gives_one_task(api: Api) -> None:
    c = api.client
    first = c.submit("echo", 1, idempotency_key="once")
    assert c.submit("echo", 1, idempotency_key="once") == first == id_for_key("once")
    with pytest.raises(Conflict) as caught:
        c.submit("echo", 2, idempotency_key="once")
    assert isinstance(caught.value, ConflictError)
    assert caught.value.status == 409 and caught.value.code == "idempotency_conflict"
    assert "once" in caught.value.message


def test_a_dag_and_its_results(api: Api) -> None:
    c = api.client
    ids = c.submit_dag({"a": {"type": "echo", "payload": "A"},
                        "b": {"type": "reverse", "payload": {"text": "abc"}, "deps": ["a"]}})
    assert c.wait(ids["b"], timeout_s=5)["state"] == "succeeded"
    assert c.result(ids["a"]) == "A" and c.result(ids["b"]) == "cba"
    with pytest.raises(InvalidRequest) as caught:
        c.submit_dag({"a": {"type": "echo", "deps": ["b"]}, "b": {"type": "echo", "deps": ["a"]}})
    assert caught.value.status == 400 and "cycle" in caught.value.message


def test_errors_carry_status_code_message_and_field(api: Api) -> None:
    c = api.client
    with pytest.raises(NotFound) as missing:
        c.get("nope")
    assert missing.value.status == 404 and "nope" in str(missing.value)
    with pytest.raises(InvalidRequest) as bad:
        c.submit("echo", max_attempts=0)
    assert bad.value.status == 422 and bad.value.field == "max_attempts"
    with pytest.raises(InvalidRequest) as unknown:
        c.submit("echo", deps=["ghost"])
    assert unknown.value.status == 400 and "ghost" in unknown.value.message
    assert all(isinstance(e.value, DtqError) for e in (missing, bad, unknown))


def test_result_of_a_failed_task_raises_with_its_reason(api: Api) -> None:
    tid = api.client.submit("flaky", {"fail_until": 9}, max_attempts=1)
    with pytest.raises(TaskFailed) as caught:
        api.client.result(tid)
    assert caught.value.state == "failed" and "on purpose" in (caught.value.reason or "")


def test_cancel_and_the_conflict_of_cancelling_too_late(paused: Api) -> None:
    c = paused.client
    a = c.submit("sleep", {"ms": 60_000})
    b = c.submit("echo", 1, deps=[a])
    assert c.cancel(b)["id"] == b
    paused.backend.run_until_finished([b], 5000)
    assert c.get(b)["state"] == "cancelled"
    assert paused.backend.run_until(lambda: paused.state(a) == "running", 5000)
    with pytest.raises(Conflict):
        c.cancel(a)


def test_wait_gives_up_at_its_deadline(paused: Api) -> None:
    tid = paused.client.submit("echo", 1)
    with pytest.raises(WaitTimeout) as caught:
        paused.client.wait(tid, timeout_s=0.05)
    assert isinstance(caught.value, TimeoutError) and caught.value.state == "submitted"


def test_listing_cluster_and_readiness(api: Api) -> None:
    c = api.client
    ids = sorted(c.submit("echo", n) for n in range(5))
    assert [t["id"] for t in c.tasks(type="echo", page_size=2)] == ids
    assert [t["id"] for t in c.tasks(state=["failed"])] == []
    assert c.cluster()["leader"]["name"] == "coordinator-1"
    assert c.ready()


def _mock(handler: Any) -> Client:
    return Client("http://api.test", transport=httpx.MockTransport(handler))


def test_no_answer_is_api_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ApiUnreachable) as caught:
        _mock(refuse).get("t1")
    assert "dtq api" in str(caught.value) and "http://api.test" in str(caught.value)
    assert not _mock(refuse).ready()


@pytest.mark.parametrize(("status", "content", "kind"), [
    (503, b'{"error": {"status": 503, "code": "unavailable", "message": "down"}}', Unavailable),
    (502, b"<html>bad gateway</html>", ServerError),
    (418, b"[]", InvalidRequest),
    (410, b'{"error": {"code": "result_expired", "message": "gone"}}', NotFound),
])
def test_any_error_answer_raises_an_api_error(status: int, content: bytes, kind: type) -> None:
    client = _mock(lambda request: httpx.Response(status, content=content))
    with pytest.raises(kind) as caught:
        client.get("t1")
    assert isinstance(caught.value, ApiError) and caught.value.status == status


def test_an_answer_that_is_not_an_object_is_a_server_error() -> None:
    with pytest.raises(ServerError):
        _mock(lambda request: httpx.Response(200, content=b"[1]")).get("t1")


# --- the command line ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    """dtq's parser, with the client commands added if cli.py does not add them yet."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "submit" not in sub.choices:
        cli_client.add_parsers(sub)
    return parser


def run(api: Api, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(cli_client, "_client", lambda args: Client(
        "http://api.test", transport=InProcessTransport(api.app), poll_s=0.001, token=TOKEN))
    args = _parser().parse_args(list(argv))
    try:
        return int(args.func(args))
    except DtqError as exc:  # as dtq.cli.main.main does
        print(f"dtq: error: {exc}")
        return 2


def test_cli_submit_prints_the_id_and_wait_prints_the_result(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(api, monkeypatch, "submit", "echo", "--payload", '{"message": "hi"}') == 0
    accepted = json.loads(capsys.readouterr().out)
    assert accepted["state"] == "submitted"  # the state at acceptance
    assert run(api, monkeypatch, "submit", "echo", "--payload", "[1]", "--dep", accepted["id"],
               "--idempotency-key", "k", "--priority", "2", "--wait") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["value"] == [1] and result["id"] == id_for_key("k")
    assert run(api, monkeypatch, "status", result["id"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["priority"] == 2
    assert run(api, monkeypatch, "result", result["id"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == [1]


def test_cli_exit_status_tells_failure_bad_input_and_timeout(
    api: Api, paused: Api, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Any,
) -> None:
    assert run(api, monkeypatch, "submit", "flaky", "--payload", '{"fail_until": 5}',
               "--max-attempts", "1", "--wait") == 1
    assert json.loads(capsys.readouterr().out)["state"] == "failed"
    assert run(api, monkeypatch, "submit", "echo", "--dep", "ghost") == 2
    assert "ghost" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad_json:
        run(api, monkeypatch, "submit", "echo", "--payload", "{nope")
    assert bad_json.value.code == 2 and "not valid JSON" in capsys.readouterr().err
    body = tmp_path / "payload.json"
    body.write_text('{"from": "file"}')
    assert run(api, monkeypatch, "submit", "echo", "--payload", f"@{body}", "--wait") == 0
    assert json.loads(capsys.readouterr().out)["value"] == {"from": "file"}
    assert run(paused, monkeypatch, "submit", "echo", "--wait", "--timeout", "0.05") == 3
    assert "still submitted" in capsys.readouterr().err


def test_cli_cancel(
    paused: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    a = paused.client.submit("sleep", {"ms": 60_000})
    b = paused.client.submit("echo", 1, deps=[a])
    assert run(paused, monkeypatch, "cancel", b) == 0
    assert json.loads(capsys.readouterr().out)["id"] == b
    assert run(paused, monkeypatch, "cancel", "ghost") == 2
    assert "404" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["api", "submit", "status", "result", "cancel"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        _parser().parse_args([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "usage: dtq " + command in out and "example" in out


def test_api_command_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DTQ_API_URL", raising=False)
    args = _parser().parse_args(["api"])
    assert (args.host, args.port, args.max_body_bytes, args.namespace) == (
        "127.0.0.1", 8000, 1024 * 1024, "dtq")
    with pytest.raises(SystemExit):
        _parser().parse_args(["api", "--max-body-bytes", "0"])
    status = _parser().parse_args(["status", "t1"])
    assert cli_client._client(status).base_url == "http://127.0.0.1:8000"
    monkeypatch.setenv("DTQ_API_URL", "http://elsewhere:9000/")
    assert cli_client._client(status).base_url == "http://elsewhere:9000"
