"""The `dtq api`, `dtq submit`, `dtq status`, `dtq result` and `dtq cancel` commands.

`add_parsers(sub)` adds them to the `dtq` parser. `dtq api` serves the REST API with uvicorn on
the production backend (RabbitMQ + Redis); the others talk to a running API through
`dtq.client.http.Client` and print JSON. Exit status: 0 done, 1 the task failed or was cancelled,
2 bad input or an error answer, 3 `--wait` ran out of time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtq.cli.main import positive_int
from dtq.client.http import DEFAULT_URL, Client, WaitTimeout
from dtq.errors import DtqError

EXIT_OK, EXIT_TASK_FAILED, EXIT_BAD_INPUT, EXIT_TIMEOUT = 0, 1, 2, 3
if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EPILOG_API = """examples:
  dtq api                                  # http://127.0.0.1:8000, docs at /docs
  dtq api --host 0.0.0.0 --port 8080 --token-file /run/secrets/dtq-api --tasks mypkg.tasks
  DTQ_API_TOKENS=$TOKEN DTQ_BROKER_URL=amqp://u:p@rabbit:5672/dtq \\
    DTQ_STORE_URL=redis://:pass@redis:6379/0 dtq api --host 0.0.0.0

Tokens ($DTQ_API_TOKENS, comma-separated; --token-file or $DTQ_API_TOKEN_FILE, one per line):
every request but /healthz and /readyz must bear one (Authorization: Bearer <token>), else 401.
Without a token the API is open, and served on loopback only. Run it next to `dtq cluster`
(same --namespace, broker and store)."""

EPILOG_SUBMIT = """examples:
  dtq submit echo --payload '{"message": "hello"}'
  dtq submit compute --payload '{"size": 100000}' --wait
  dtq submit echo --payload @body.json --dep t-0193... --idempotency-key order-42

exit status: 0 accepted (with --wait: succeeded), 1 failed or cancelled (--wait),
2 bad input or an error answer, 3 --wait timed out."""

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _wrap(text: str) -> str:
    return textwrap.fill(text, 78)


def add_parsers(sub: Subparsers) -> None:
    """Add api, submit, status, result and cancel to the `dtq` subcommands."""
    _add_api(sub)
    _add_submit(sub)
    _add_status(sub)
    _add_result(sub)
    _add_cancel(sub)


# --- dtq api ------------------------------------------------------------------------------------


def _add_api(sub: Subparsers) -> None:
    p = sub.add_parser("api", help="serve the REST API (uvicorn)", epilog=EPILOG_API,
                       formatter_class=_FORMATTER,
                       description=_wrap(
                           "Serve the REST API on the production backend: submissions go to the "
                           "leader's RabbitMQ queue, state is read from Redis. OpenAPI at "
                           "/openapi.json, interactive docs at /docs."))
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-body-bytes", type=positive_int, default=1024 * 1024, metavar="N",
                   help="largest request body accepted, else 413 (default 1048576)")
    p.add_argument("--tasks", action="append", default=[], metavar="MODULE",
                   help="task types to accept besides the built-in ones (as for `dtq worker`); "
                   "repeatable. Unknown types and payloads a type refuses are answered 422")
    p.add_argument("--any-type", action="store_true",
                   help="accept any task type name without checking it (workers fail unknown "
                   "types)")
    p.add_argument("--broker-url", default=None,
                   help="RabbitMQ URL (default: $DTQ_BROKER_URL or amqp://guest:guest@127.0.0.1"
                   ":5672/%%2F)")
    p.add_argument("--store-url", default=None,
                   help="Redis URL (default: $DTQ_STORE_URL or redis://127.0.0.1:6379/0)")
    p.add_argument("--namespace", default="dtq",
                   help="prefix of every queue and key, as given to the cluster (default: dtq)")
    p.add_argument("--log-level", default=None, type=str.lower,
                   choices=["debug", "info", "warning", "error"], help="default: info")
    p.add_argument("--quorum", action="store_true",
                   help="the namespace runs on quorum queues, as its nodes were told (default: "
                   "$DTQ_QUORUM)")
    p.add_argument("--token-file", action="append", default=[], metavar="FILE",
                   help="bearer tokens the API accepts, one per line (repeatable; with "
                   "$DTQ_API_TOKENS and $DTQ_API_TOKEN_FILE, all are valid at once)")
    p.set_defaults(func=_run_api)


def _run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from dtq.api.auth import check_exposure, load_tokens
    from dtq.api.server import create_app
    from dtq.client.backend import RabbitBackend
    from dtq.runtime.process import load_task_modules

    tokens = load_tokens(args.token_file)
    check_exposure(args.host, tokens)
    types = None if args.any_type else load_task_modules(args.tasks)
    backend = RabbitBackend(args.broker_url, args.store_url, args.namespace,
                            quorum=args.quorum or None)
    try:
        app = create_app(backend, max_body_bytes=args.max_body_bytes, task_types=types,
                         tokens=tokens)
        auth = (f"{len(tokens)} bearer token(s) accepted" if tokens else
                "NO TOKEN: open to anyone who can reach this address (set DTQ_API_TOKENS)")
        print(f"dtq api: http://{args.host}:{args.port} (docs at /docs), namespace "
              f"{args.namespace!r}, {auth}; Ctrl-C stops it", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port,
                    log_level=args.log_level or "info")
    finally:
        backend.close()
    return EXIT_OK


# --- client commands ---------------------------------------------------------------------------


def _api_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=None, metavar="URL",
                   help=f"the REST API (default: $DTQ_API_URL or {DEFAULT_URL})")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="read the API's bearer token from FILE (default: $DTQ_API_TOKEN)")
    p.add_argument("--token", default=None,
                   help="the API's bearer token (other local users may see it in the process "
                   "list: prefer $DTQ_API_TOKEN or --token-file)")


def _client(args: argparse.Namespace) -> Client:
    return Client(args.api or os.environ.get("DTQ_API_URL") or DEFAULT_URL,
                  token=_token(args))


def _token(args: argparse.Namespace) -> str | None:
    """--token, else the first line of --token-file, else $DTQ_API_TOKEN (None: no token)."""
    if args.token:
        return str(args.token)
    if args.token_file:
        try:
            lines = Path(args.token_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DtqError(f"cannot read the token file {args.token_file!r}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
        tokens = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        return tokens[0] if tokens else None
    return os.environ.get("DTQ_API_TOKEN") or None


def _print(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _json_arg(text: str) -> Any:
    """A JSON value, or @FILE for one read from a file."""
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        return json.loads(raw)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {exc.strerror}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text[:60]!r}") from None


def _add_submit(sub: Subparsers) -> None:
    p = sub.add_parser("submit", help="submit a task through the REST API",
                       epilog=EPILOG_SUBMIT, formatter_class=_FORMATTER,
                       description=_wrap(
                           "Submit one task and print the answer (its id and state); with "
                           "--wait, wait for it to finish and print its result."))
    p.add_argument("type", metavar="TYPE", help="task type: echo, compute, sleep, io, or yours")
    p.add_argument("--payload", type=_json_arg, default=None, metavar="JSON",
                   help="the task's input as JSON, or @FILE (default: null)")
    p.add_argument("--dep", action="append", default=[], metavar="ID",
                   help="a task that must succeed first; repeatable")
    p.add_argument("--idempotency-key", default=None, metavar="KEY",
                   help="the same key always gives the same task id and one execution")
    p.add_argument("--id", default=None, help="your own task id (default: generated)")
    p.add_argument("--max-attempts", type=int, default=None, metavar="N",
                   help="attempts before the task fails (default 3)")
    p.add_argument("--timeout-ms", type=int, default=None, metavar="MS",
                   help="limit of one attempt (default 60000)")
    p.add_argument("--priority", type=int, default=None, metavar="0-9", help="default 0")
    p.add_argument("--wait", action="store_true", help="wait for the task; print its result")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="how long --wait waits (default 60 s)")
    _api_arg(p)
    p.set_defaults(func=_submit)


def _submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"type": args.type, "payload": args.payload, "deps": args.dep}
    for field in ("id", "max_attempts", "timeout_ms", "priority"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    with _client(args) as client:
        accepted = client.post_task(body, idempotency_key=args.idempotency_key)
        if not args.wait:
            _print(accepted)
            return EXIT_OK
        try:
            client.wait(str(accepted["id"]), timeout_s=args.timeout)
        except WaitTimeout as exc:
            print(f"dtq: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
        return _print_result(client.result_body(str(accepted["id"])))


def _print_result(body: dict[str, Any]) -> int:
    _print(body)
    return EXIT_OK if body.get("state") == "succeeded" else EXIT_TASK_FAILED


def _add_task_command(sub: Subparsers, name: str, help: str, description: str) -> None:
    p = sub.add_parser(name, help=help, description=description,
                       epilog=f"example: dtq {name} t-0193...")
    p.add_argument("id", metavar="ID", help="task id (as printed by `dtq submit`)")
    _api_arg(p)
    p.set_defaults(func=_COMMANDS[name])


def _add_status(sub: Subparsers) -> None:
    _add_task_command(sub, "status", "print a task's record",
                      "Print a task's record as JSON: state, attempt, reason, timestamps, spec, "
                      "and the traceback of the last failed attempt if it raised.")


def _add_result(sub: Subparsers) -> None:
    _add_task_command(sub, "result", "print a finished task's result",
                      "Print a finished task's result as JSON: its value, or why it failed. "
                      "Exit status 1 if it failed or was cancelled, 2 if it has not finished.")


def _add_cancel(sub: Subparsers) -> None:
    _add_task_command(sub, "cancel", "cancel a task that has not started",
                      "Ask the leader to cancel a task that is still waiting (submitted, "
                      "pending or ready). A task that started cannot be cancelled (exit 2).")


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.get(args.id))
    return EXIT_OK


def _result(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _print_result(client.result_body(args.id))


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.cancel(args.id))
    return EXIT_OK


_COMMANDS = {"status": _status, "result": _result, "cancel": _cancel}
