"""``python -m sandbox.gateway``: the gateway served like ``chalice local``, fitted for the sandbox.

The same app, config and stage overlay as ``chalice local --stage local`` (Chalice's own
CLIFactory and LocalDevServer), with three differences a person at the terminal notices:

- A listen backlog of 1024 instead of http.server's 5: with 5, a burst of 50 clients connecting
  at once had 35 connections reset before the server could accept them.
- One readable line per request on stderr (method, path, status, the envelope's errorCode and
  message or the result's status, time taken) instead of http.server's access lines; requests
  marked ``X-Sandbox-Quiet`` (the inbox page's polls) are left out unless they fail. The app's
  JSON logs go to stdout, which ``make run`` sends to ``.sandbox/logs/gateway.log``.
- No warning that the IAM authorizer is not enforced locally (docs/sandbox.md says so once) and
  no root logger at INFO, so botocore's "Found credentials" lines stay out of the terminal.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import unquote

from sandbox.lifeline import die_with_parent
from sandbox.terminal import say

PROJECT_DIR = Path(__file__).resolve().parent.parent
LISTEN_BACKLOG = 1024
QUIET_HEADER = "X-Sandbox-Quiet"


def _printable(text: str, limit: int = 200) -> str:
    """``text`` with control characters replaced, so a request cannot steer the terminal."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "…"


def summarize(status: int, body) -> str:
    """What a person wants from an answer: the errorCode and message, or the result's status."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        answer = json.loads(body) if body else None
    except ValueError:
        return ""
    if not isinstance(answer, dict):
        return ""
    if answer.get("success") is False or status >= 400:
        code = answer.get("errorCode") or answer.get("Code") or ""
        message = answer.get("message") or answer.get("Message") or ""
        return _printable(f"{code}: {message}" if message else str(code))
    result = answer.get("result")
    if isinstance(result, dict):
        return _printable(" ".join(str(result[key]) for key in ("status", "disposition")
                                   if isinstance(result.get(key), str)))
    return ""


def build_server(host: str, port: int, stage: str, project_dir: Path = PROJECT_DIR):
    """The app of ``project_dir`` in stage ``stage``, bound to host:port (not yet serving).

    Raises OSError when the port is taken.
    """
    warnings.filterwarnings("ignore", message=r".* is not a supported in local mode",
                            category=UserWarning)
    from chalice import local
    from chalice.cli.factory import CLIFactory
    from chalice.deploy.validate import validate_routes

    class Handler(local.ChaliceRequestHandler):
        def _generic_handle(self) -> None:
            started = time.monotonic()
            self._answer = (0, b"")
            try:
                super()._generic_handle()
            finally:
                self._report(time.monotonic() - started)

        def _send_http_response(self, code, headers, body) -> None:
            self._answer = (code, body)
            super()._send_http_response(code, headers, body)

        def _report(self, seconds: float) -> None:
            status, body = self._answer
            if self.headers.get(QUIET_HEADER) and status < 500:
                return
            summary = summarize(status, body)
            line = (f"[gateway] {self.command} {_printable(unquote(self.path), 120)} {status}"
                    f"{' ' + summary if summary else ''} ({seconds * 1000:.0f} ms)")
            if status >= 500:
                line += " - the app's JSON log has the details"
            say(line)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = \
            _generic_handle

        def log_request(self, code="-", size="-") -> None:
            pass  # _report writes one line per request

        def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
            say(f"[gateway] {_printable(format % args)}")

    class Server(local.ThreadedHTTPServer):
        request_queue_size = LISTEN_BACKLOG

    # As the chalice CLI does: the stage's environment_variables are laid over os.environ itself.
    factory = CLIFactory(project_dir=str(project_dir), environ=os.environ)
    config = factory.create_config_obj(chalice_stage_name=stage)
    app = config.chalice_app
    validate_routes(app.routes)
    # As chalice.local.create_local_server does: the app's current_request becomes per thread.
    local.CustomLocalChalice.__bases__ = (local.LocalChalice, app.__class__)
    app.__class__ = local.CustomLocalChalice
    return local.LocalDevServer(app, config, host, port, handler_cls=Handler, server_cls=Server)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m sandbox.gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stage", default="local")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting laid over the stage's own environment_variables")
    args = parser.parse_args(argv)
    settings = {}
    for setting in args.setting:
        name, equals, value = setting.partition("=")
        if not equals or not name:
            parser.error(f"--setting {setting!r} is not NAME=VALUE")
        settings[name] = value

    def _terminate(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        server = build_server(args.host, args.port, args.stage)
    except OSError as error:
        print(f"[gateway] cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    # After build_server, which laid the stage's environment_variables over os.environ; the app
    # reads its settings per request.
    os.environ.update(settings)
    try:
        server.server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
