"""moto server for the sandbox, with its requests applied one at a time.

moto's in-memory backends are not thread-safe: its TransactWriteItems deep-copies every table it
touches while other request threads write to them, and under concurrent load (the sandbox's
burst test: 16 sends at once) it answers HTTP 500 "dictionary changed size during iteration".
Real DynamoDB applies each request atomically; serializing the requests here gives the gateway
that same guarantee, so a 500 from the emulator is never mistaken for a gateway bug. Connections
are still accepted concurrently.

Run as ``python -m sandbox.moto_server -H 127.0.0.1 -p 5000``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


class SerializedApp:
    """A WSGI app that runs ``app`` for one request at a time, body included."""

    def __init__(self, app):
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            result = self._app(environ, start_response)
            try:
                body = list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.moto_server")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto.server does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, SerializedApp(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
