"""Bearer-token authentication of the REST API (`dtq.api.auth`), in process and as `dtq api`.

Shown: a request without a token, or with a wrong one, is 401 with the API's JSON error body
on every route but /healthz and /readyz; the right token (any of several) works, through
`dtq.Client` and the `dtq` commands too; the description documents the 401; `dtq api` refuses
to serve on a non-loopback address without a token; a token never appears in what the API
logs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from dtq.api.auth import TokenError, check_exposure, load_tokens
from dtq.api.server import create_app
from dtq.client.backend import SimBackend
from dtq.client.http import Client, InProcessTransport, Unauthorized

from .test_api_kit import TOKEN, USER_TASKS, Api, api_over, make_api, wait_until

OTHER = "second-token-abcdefghijklmnop"


@pytest.fixture
def api() -> Api:
    return make_api()


def _anonymous(api: Api, **headers: str) -> httpx.Client:
    return httpx.Client(base_url="http://api.test", transport=InProcessTransport(api.app),
                        headers=headers)


ROUTES = [("POST", "/tasks"), ("POST", "/dags"), ("GET", "/tasks"), ("GET", "/tasks/t-1"),
          ("GET", "/tasks/t-1/result"), ("DELETE", "/tasks/t-1"), ("GET", "/cluster"),
          ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/"), ("GET", "/no-such-route"),
          ("PUT", "/tasks")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(("header", "code"), [
    (None, "missing_token"), ("", "missing_token"), ("Bearer", "missing_token"),
    ("Basic dXNlcjpwYXNz", "missing_token"), (f"Token {TOKEN}", "missing_token"),
    (f"Bearer {TOKEN}x", "invalid_token"), (f"Bearer {TOKEN[:-1]}", "invalid_token"),
    ("Bearer wrong-token-of-some-length", "invalid_token"),
])
def test_a_request_without_a_valid_token_is_401(
    api: Api, method: str, path: str, header: str | None, code: str,
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    r = _anonymous(api, **headers).request(method, path, content=b"{}",
                                           headers={"content-type": "application/json"})
    assert r.status_code == 401, r.text
    assert r.json() == {"error": {"status": 401, "code": code, "field": None,
                                  "message": r.json()["error"]["message"]}}
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="dtq"'
    assert TOKEN not in r.text
    assert api.events("submitted") == [] and api.backend.store.scan_tasks() == []


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_the_probes_are_open(api: Api, path: str) -> None:
    assert _anonymous(api).get(path).status_code == 200


def test_the_right_token_works_and_any_of_several(api: Api) -> None:
    backend = SimBackend(task_modules=(USER_TASKS,))
    app = create_app(backend, tokens=[TOKEN, OTHER])
    for token in (TOKEN, OTHER, f" {TOKEN} "):
        client = api_over(backend, app, token=token.strip()).http
        r = client.post("/tasks", json={"type": "echo", "payload": token.strip()[:4]})
        assert r.status_code == 202, r.text
        raw = client.get("/tasks", headers={"Authorization": f"bearer   {token}"})
        assert raw.status_code == 200, raw.text
    assert len(list(api_over(backend, app).client.tasks())) == 3


def test_the_client_takes_the_token_or_the_environment(
    api: Api, monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = InProcessTransport(api.app)
    with pytest.raises(Unauthorized, match="missing_token"):
        Client("http://api.test", transport=transport).cluster()
    with pytest.raises(Unauthorized, match="invalid_token"):
        Client("http://api.test", transport=transport, token=OTHER).cluster()
    assert "workers" in Client("http://api.test", transport=transport, token=TOKEN).cluster()
    monkeypatch.setenv("DTQ_API_TOKEN", TOKEN)
    assert "workers" in Client("http://api.test", transport=transport).cluster()


def test_the_description_documents_the_401(api: Api) -> None:
    doc: dict[str, Any] = api.http.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            probe = path in ("/healthz", "/readyz")
            assert ("401" in operation["responses"]) is not probe, (method, path)
            assert ("security" in operation) is not probe, (method, path)


def test_tokens_come_from_the_environment_and_files(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(f"# rotated monthly\n{OTHER}\n\n")
    (tmp_path / "more").write_text(f"{TOKEN}\n")
    env = {"DTQ_API_TOKENS": f"{TOKEN}, {OTHER}", "DTQ_API_TOKEN_FILE": str(tmp_path / "more")}
    assert load_tokens([str(tmp_path / "tokens")], env) == (TOKEN, OTHER)
    assert load_tokens([], {}) == ()
    with pytest.raises(TokenError, match="#1 is not 16"):
        load_tokens([], {"DTQ_API_TOKENS": "short"})
    with pytest.raises(TokenError, match="cannot read the token file"):
        load_tokens([str(tmp_path / "missing")], {})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "api.example.com", "[::]"])
def test_no_token_no_exposure(host: str) -> None:
    with pytest.raises(TokenError, match="without a token"):
        check_exposure(host, ())
    check_exposure(host, (TOKEN,))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.5"])
def test_an_open_api_on_loopback_is_allowed(host: str) -> None:
    check_exposure(host, ())


# --- as `dtq api`, a real process ------------------------------------------------------------


def _dtq(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dtq.cli", *args],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        **kwargs)


def test_dtq_api_refuses_a_public_address_without_a_token() -> None:
    env = {"DTQ_API_TOKENS": "", "DTQ_API_TOKEN_FILE": "",
           # unreachable services: the refusal comes before any connection
           "DTQ_BROKER_URL": "amqp://u:p@192.0.2.1:5672/%2F",
           "DTQ_STORE_URL": "redis://192.0.2.1:6379/0"}
    proc = _dtq("api", "--host", "0.0.0.0", "--port", "1", env=env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.strip().splitlines() == [
        "dtq: error: refusing to serve the API on 0.0.0.0 without a token: anyone who reaches "
        "it could run and cancel tasks. Set DTQ_API_TOKENS or --token-file, or bind 127.0.0.1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.rabbitmq
def test_dtq_api_never_logs_a_token(
    rabbitmq_url: str, redis_url: str, tmp_path: Path,
) -> None:
    port = _free_port()
    secret_file = tmp_path / "tokens"
    file_token = "file-token-" + uuid.uuid4().hex
    env_token = "env-token-" + uuid.uuid4().hex
    secret_file.write_text(file_token + "\n")
    proc = _dtq("api", "--host", "127.0.0.1", "--port", str(port), "--token-file",
                str(secret_file), "--log-level", "debug", "--any-type",
                "--namespace", f"test-{uuid.uuid4().hex[:8]}",
                env={"DTQ_API_TOKENS": env_token, "DTQ_BROKER_URL": rabbitmq_url,
                     "DTQ_STORE_URL": redis_url}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wrong = "wrong-token-" + uuid.uuid4().hex
    try:
        wait_until(lambda: _answers(url) or proc.poll() is not None, 60, "dtq api to serve")
        assert proc.poll() is None, proc.communicate()[0]
        with httpx.Client(base_url=url) as http:
            for token in (file_token, env_token):
                r = http.get("/tasks", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200, r.text
            r = http.post("/tasks", json={"type": "echo"},
                          headers={"Authorization": f"Bearer {wrong}"})
            assert r.status_code == 401
            r = http.get(f"/tasks/{wrong}", headers={"Authorization": f"Bearer {env_token}"})
            assert r.status_code == 404
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from dtq.cli.main import main; sys.exit(main())",
             "status", "t-none", "--api", url, "--token-file", str(secret_file)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "DTQ_API_TOKEN": ""})
        assert done.returncode == 2 and "404" in done.stderr, done.stderr  # authenticated
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert "GET /tasks" in out  # the access log was on
    for token in (file_token, env_token, wrong[len("wrong-token-"):]):
        assert token not in out.replace(f"/tasks/{wrong}", "/tasks/<id>"), out


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_commands_send_the_token(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dtq.cli import client as cli_client
    from dtq.cli.main import main

    made: list[Client] = []

    def client(args: Any) -> Client:
        made.append(Client("http://api.test", transport=InProcessTransport(api.app),
                           token=cli_client._token(args)))
        return made[-1]

    monkeypatch.setattr(cli_client, "_client", client)
    monkeypatch.delenv("DTQ_API_TOKEN", raising=False)
    assert main(["submit", "echo", "--payload", "1"]) == 2
    assert "401 missing_token" in capsys.readouterr().err
    assert main(["submit", "echo", "--payload", "1", "--token", TOKEN]) == 0
    tid = json.loads(capsys.readouterr().out)["id"]
    (tmp_path / "token").write_text(f"# the API's\n{TOKEN}\n")
    assert main(["status", tid, "--token-file", str(tmp_path / "token")]) == 0
    monkeypatch.setenv("DTQ_API_TOKEN", TOKEN)
    assert main(["result", tid]) == 0
    assert main(["cancel", tid, "--token", OTHER]) == 2
    assert "401 invalid_token" in capsys.readouterr().err
