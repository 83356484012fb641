"""The simulator's HTTP server: Zeyi's two paths (with injected faults), the control API, and
the inbox page, all on one port."""
from __future__ import annotations

import contextlib
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from sandbox.zeyi import control, inbox
from sandbox.zeyi.model import Fault, best_effort_json, code_of
from sandbox.zeyi.rules import CANCEL_PATH, MAX_BODY_BYTES, SEND_PATH, envelope

if TYPE_CHECKING:  # the simulator builds its server: no import back at run time
    from sandbox.zeyi.simulator import ZeyiSimulator

JSON_TYPE = "application/json;charset=utf-8"
TRICKLE_CHUNK_BYTES = 8
# Faults that answer in place of Zeyi: the request is logged and nothing is created.
INSTEAD_OF_ZEYI = ("status503", "not_json", "refuse", "system_error", "drop")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a burst of concurrent sends must not overflow the accept queue


def make_server(simulator: ZeyiSimulator) -> _Server:
    """Bind the simulator's host and port (0: a free one). Raises OSError when taken."""
    server = _Server((simulator.config.host, simulator.config.port), _Handler)
    server.simulator = simulator
    return server


class _Handler(BaseHTTPRequestHandler):
    server_version = "ZeyiSimulator/1.0"
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is closed after a minute

    @property
    def simulator(self) -> ZeyiSimulator:
        return self.server.simulator

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        self.simulator.say_request(f"{self.address_string()} {format % args}")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self._reply(413, envelope(success=False, error_code="BODY_TOO_LARGE",
                                      message=f"body must be at most {MAX_BODY_BYTES} bytes"))
            return None
        return self.rfile.read(int(length)) if int(length) else b""

    def _reply(self, status: int, payload, content_type: str = JSON_TYPE,
               headers: dict | None = None):
        data = payload if isinstance(payload, bytes) else inbox.as_json(payload)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _foreign_origin(self) -> bool:
        """A browser's POST from another site (the page's own POSTs come from this origin;
        curl sends no Origin): such a page must not decide approvals or arm faults."""
        origin = self.headers.get("Origin")
        if origin is None:
            return False
        port = self.server.server_address[1]
        return origin not in {f"http://{host}:{port}"
                              for host in ("127.0.0.1", "localhost", self.simulator.config.host)}

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        raw = self._read_body() if method == "POST" else b""
        if raw is None:
            return
        if method == "POST" and path in (SEND_PATH, CANCEL_PATH):
            self._zeyi_call("send" if path == SEND_PATH else "cancel", path, raw)
        elif path.startswith("/_control/"):
            if method == "POST" and self._foreign_origin():
                self._reply(403, {"error": "the control API takes POSTs from this origin only"})
                return
            self._reply(*control.handle(self.simulator, method, path, query, raw))
        elif method == "GET" and path in ("/", "/inbox"):
            self._reply(200, inbox.page(), "text/html;charset=utf-8",
                        {"Cache-Control": "no-store"})
        elif method == "GET" and path.startswith("/_inbox/gateway/"):
            code = unquote(path[len("/_inbox/gateway/"):])
            self._reply(200, inbox.gateway_view(self.simulator.config.gateway_url, code))
        else:
            self._reply(404, envelope(success=False, error_code="NOT_FOUND",
                                      message=f"no route {method} {path}"))

    def _zeyi_call(self, kind: str, path: str, raw: bytes) -> None:
        simulator = self.simulator
        fault = simulator.take_fault(kind)
        headers = {name: value for name, value in self.headers.items()}
        if fault is not None and fault.mode in INSTEAD_OF_ZEYI:
            entry = {"kind": kind, "path": path, "clientIp": self.client_address[0],
                     "headers": headers, "body": raw.decode("utf-8", errors="replace"),
                     "json": best_effort_json(raw), "verdict": f"fault:{fault.mode}"}
            simulator.log_request(entry)
            simulator.say(f"{kind} {code_of(entry)} → fault {fault.mode}")
            self._fault_reply(fault)
            return
        if fault is not None and fault.mode == "slow":
            simulator.stopping.wait(fault.seconds)  # shutdown cuts the delay short
        answer, entry = simulator.handle_zeyi_call(kind, self.client_address[0], headers, raw)
        entry["path"] = path
        if fault is not None:
            entry["fault"] = fault.mode
        simulator.log_request(entry)
        if fault is not None and fault.mode == "accept_then_drop":
            simulator.say(f"{kind} {code_of(entry)} → fault accept_then_drop: processed,"
                          " answer dropped")
            self._drop()
        elif fault is not None and fault.mode == "trickle":
            self._trickle(inbox.as_json(answer), fault.seconds)
        else:
            self._reply(200, answer)

    def _fault_reply(self, fault: Fault) -> None:
        if fault.mode == "status503":
            self._reply(503, b"<html><body>503 Service Temporarily Unavailable</body></html>",
                        "text/html")
        elif fault.mode == "not_json":
            self._reply(200, b"<html><body>502 Bad Gateway (nginx)</body></html>", "text/html")
        elif fault.mode == "refuse":
            self._reply(200, envelope(success=False, business=True,
                                      error_code="SIMULATED_REFUSAL",
                                      message="refused by an injected fault"))
        elif fault.mode == "system_error":
            self._reply(200, envelope(success=False, business=False, error_code="SYSTEM_ERROR",
                                      message="系统异常 (an injected fault)"))
        else:  # drop: close the connection without answering
            self._drop()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _trickle(self, data: bytes, seconds: float) -> None:
        """A whole, correct answer, sent a few bytes at a time over ``seconds``: the first
        bytes at once, so only a client with a total deadline gives up."""
        head = (f"{self.protocol_version} 200 OK\r\nServer: {self.version_string()}\r\n"
                f"Date: {self.date_time_string()}\r\nContent-Type: {JSON_TYPE}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode("latin-1")
        wire = head + data
        chunks = [wire[i:i + TRICKLE_CHUNK_BYTES]
                  for i in range(0, len(wire), TRICKLE_CHUNK_BYTES)]
        interval = seconds / max(1, len(chunks) - 1)
        self.log_request(200, len(data))
        try:
            for index, chunk in enumerate(chunks):
                if index and self.simulator.stopping.wait(interval):
                    break
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True

