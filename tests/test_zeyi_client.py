"""ZeyiClient against real HTTP servers on 127.0.0.1: the Zeyi simulator (which checks every
signature and ciphertext with its own code, sandbox/zeyi_protocol.py) and, for answers the
simulator never gives, a scripted server. What is asserted is what Zeyi receives and what the
caller is told."""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chalicelib.errors import (
    ConfigError,
    UpstreamOutcomeUnknownError,
    UpstreamRejectedError,
    UpstreamSystemError,
    UpstreamUnavailableError,
)
from chalicelib.protocol.credentials import Credential
from chalicelib.protocol.zeyi_client import ZeyiClient
from sandbox.zeyi_protocol import Credential as ZeyiCredential
from sandbox.zeyi_simulator import SimulatorConfig, ZeyiSimulator
from tests.conftest import INBOUND, OUTBOUND, simulator
from tests.moto_server import free_port
from tests.peer import cancel_body, send_body


def outbound(**overrides) -> Credential:
    values = {"app_key": OUTBOUND["appKey"], "app_secret": OUTBOUND["appSecret"],
              "iv": OUTBOUND["iv"], **overrides}
    return Credential(**values)


class Recorder:
    """Stands in for time.sleep: records the backoff and optionally acts on it."""

    def __init__(self, action=None):
        self.sleeps: list[float] = []
        self._action = action

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self._action is not None:
            self._action()


def client_for(url: str, credential: Credential | None = None, **overrides) -> ZeyiClient:
    options = {"connect_timeout_seconds": 1.0, "read_timeout_seconds": 2.0, "encrypt": False,
               "sleep": Recorder(), **overrides}
    return ZeyiClient(url, lambda: credential or outbound(), **options)




def md5_sign(app_key: str, secret: str, headers: dict, body: bytes, legacy=False) -> str:
    """protocol.md's sign, written out once more for the assertions."""
    text = (app_key + secret + headers["timestamp"] + headers["nonce"]).encode()
    return hashlib.md5(text + (b"" if legacy else body)).hexdigest()


# -- what Zeyi receives ------------------------------------------------------------------------

def test_an_accepted_send_returns_zeyis_envelope_and_zeyi_saw_a_valid_signed_body(zeyi):
    body = send_body()
    answer = client_for(zeyi.url).send(body)

    assert answer.envelope == {"success": True, "businessException": False, "errorCode": None,
                               "message": None, "result": None}
    assert (answer.http_status, json.loads(answer.text)) == (200, answer.envelope)
    [received] = zeyi.requests_log(kind="send")
    assert received["verdict"] == "OK"
    assert received["path"] == "/tms-service-api/audit/send"
    assert received["json"] == body
    wire = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    assert received["body"] == wire
    headers = {name.lower(): value for name, value in received["headers"].items()}
    assert headers["content-type"] == "application/json;charset=utf-8"
    assert headers["appkey"] == OUTBOUND["appKey"]
    assert re.fullmatch(r"[0-9]{13}", headers["timestamp"])
    assert re.fullmatch(r"[A-Za-z0-9]{6}", headers["nonce"])
    assert headers["sign"] == md5_sign(OUTBOUND["appKey"], OUTBOUND["appSecret"], headers,
                                       wire.encode("utf-8"))


def test_each_call_has_a_fresh_nonce(zeyi):
    client = client_for(zeyi.url)
    for index in range(5):
        client.send(send_body(f"PO-{index}"))
    nonces = {entry["headers"]["nonce"] for entry in zeyi.requests_log(kind="send")}
    assert len(nonces) == 5


def test_an_accepted_cancel_goes_to_the_cancel_path(zeyi):
    client = client_for(zeyi.url)
    client.send(send_body())
    assert client.cancel(cancel_body()).envelope["success"] is True
    [received] = zeyi.requests_log(kind="cancel")
    assert (received["verdict"], received["json"]) == ("OK", cancel_body())
    assert zeyi.approval_json("PO-1")["status"] == "TERMINATED"


def test_encrypted_calls_carry_base64_that_zeyi_decrypts_to_the_prefixed_body():
    with simulator(encrypt_requests=True) as sim:
        body = send_body()
        assert client_for(sim.url, encrypt=True).send(body).envelope["success"] is True
        [received] = sim.requests_log(kind="send")
    assert received["verdict"] == "OK"
    assert received["plaintext"] == json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    headers = {name.lower(): value for name, value in received["headers"].items()}
    assert headers["content-type"] == "text/plain;charset=utf-8"
    assert re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", received["body"])
    assert headers["sign"] == md5_sign(OUTBOUND["appKey"], OUTBOUND["appSecret"], headers,
                                       received["body"].encode("ascii"))


def test_a_legacy_credential_signs_without_the_body(zeyi):
    with pytest.raises(UpstreamSystemError):  # the simulator speaks the current protocol only
        client_for(zeyi.url, outbound(legacy_sign=True)).send(send_body())
    [received] = zeyi.requests_log(kind="send")
    headers = received["headers"]
    assert headers["sign"] == md5_sign(OUTBOUND["appKey"], OUTBOUND["appSecret"], headers, b"",
                                       legacy=True)


# -- refusals ------------------------------------------------------------------------------------

def test_a_business_refusal_keeps_zeyis_error_code_and_message(zeyi):
    client = client_for(zeyi.url)
    client.send(send_body())
    with pytest.raises(UpstreamRejectedError) as caught:
        client.send(send_body())
    error = caught.value
    assert error.error_code == "APPROVAL_ACTIVE"
    assert error.business is True
    assert 400 <= error.status < 500
    assert "already has an approval" in error.message


def test_a_wrong_secret_is_a_zeyi_failure_that_is_not_a_refusal(zeyi):
    # Zeyi answers a bad sign with businessException false, like any fault of its own: the
    # envelope does not say nothing was created, so the outcome stays open, with Zeyi's code.
    wrong = outbound(app_secret="0" * 32)
    with pytest.raises(UpstreamSystemError) as caught:
        client_for(zeyi.url, wrong).send(send_body())
    assert (caught.value.error_code, caught.value.status) == ("SIGN_INVALID", 502)
    assert isinstance(caught.value, UpstreamOutcomeUnknownError)
    assert caught.value.answer.envelope is None and "SIGN_INVALID" in caught.value.answer.text


def test_an_injected_refusal(zeyi):
    zeyi.add_fault("send", "refuse")
    with pytest.raises(UpstreamRejectedError) as caught:
        client_for(zeyi.url).send(send_body())
    assert caught.value.error_code == "SIMULATED_REFUSAL"


# -- answers that cannot be trusted: the outcome is unknown, nothing is retried -------------------

@pytest.mark.parametrize("mode, status, words", [
    ("status503", 502, "HTTP 503"),
    ("not_json", 502, "not its response envelope"),
    ("drop", 502, "broke after the request was sent"),
])
def test_a_bad_answer_leaves_the_outcome_unknown_and_is_not_retried(zeyi, mode, status, words):
    zeyi.add_fault("send", mode)
    client = client_for(zeyi.url)
    with pytest.raises(UpstreamOutcomeUnknownError) as caught:
        client.send(send_body())
    assert caught.value.error_code == "UPSTREAM_OUTCOME_UNKNOWN"
    assert caught.value.status == status
    assert words in caught.value.message
    assert len(zeyi.requests_log(kind="send")) == 1


def test_a_slow_zeyi_is_a_504_with_unknown_outcome_and_one_request(zeyi):
    zeyi.add_fault("send", "slow", seconds=1.5)
    client = client_for(zeyi.url, read_timeout_seconds=0.3)
    with pytest.raises(UpstreamOutcomeUnknownError) as caught:
        client.send(send_body())
    assert caught.value.status == 504
    assert "did not answer within 0.3 s" in caught.value.message
    assert client._sleep.sleeps == []  # noqa: SLF001 - never retried
    # The request did arrive: that is exactly why the outcome is unknown.
    assert zeyi.approval_json("PO-1", wait_seconds=3)["status"] == "PENDING"


# -- Zeyi unreachable: retried, then UPSTREAM_UNAVAILABLE -----------------------------------------

def test_a_closed_port_is_retried_with_backoff_then_unavailable():
    client = client_for(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamUnavailableError) as caught:
        client.send(send_body())
    assert caught.value.error_code == "UPSTREAM_UNAVAILABLE"
    assert caught.value.status == 502
    assert "after 3 attempts" in caught.value.message
    assert client._sleep.sleeps == [0.2, 0.4]  # noqa: SLF001


def test_a_name_that_does_not_resolve_is_retried_then_unavailable(monkeypatch):
    # No DNS query leaves the test: the resolver itself answers "no such name".
    def no_such_name(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    client = client_for("http://gw.zeyi.test")
    with pytest.raises(UpstreamUnavailableError) as caught:
        client.send(send_body())
    assert "name resolution failed" in caught.value.message
    assert client._sleep.sleeps == [0.2, 0.4]  # noqa: SLF001


def test_a_refused_connection_is_retried_and_the_retry_succeeds():
    port = free_port()
    started: list[ZeyiSimulator] = []

    def zeyi_comes_up():
        if not started:
            started.append(ZeyiSimulator(SimulatorConfig(
                outbound=ZeyiCredential.from_json(OUTBOUND),
                inbound=ZeyiCredential.from_json(INBOUND), port=port)).start())

    sleep = Recorder(zeyi_comes_up)
    try:
        answer = client_for(f"http://127.0.0.1:{port}", sleep=sleep).send(send_body())
        assert answer.envelope["success"] is True
        assert sleep.sleeps == [0.2]
        assert [e["verdict"] for e in started[0].requests_log(kind="send")] == ["OK"]
    finally:
        for sim in started:
            sim.stop(timeout_seconds=2.0)


@contextlib.contextmanager
def port_that_never_accepts():
    """A listening socket whose accept queue is full, so a new SYN gets no answer (Linux)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def test_a_connect_timeout_is_retried_then_unavailable():
    with port_that_never_accepts() as port:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
            pytest.skip("this kernel completes connections beyond the listen backlog")
        except TimeoutError:
            pass
        finally:
            probe.close()
        client = client_for(f"http://127.0.0.1:{port}", connect_timeout_seconds=0.2)
        with pytest.raises(UpstreamUnavailableError) as caught:
            client.send(send_body())
    assert "connect timeout" in caught.value.message
    assert client._sleep.sleeps == [0.2, 0.4]  # noqa: SLF001


def test_a_credential_that_cannot_be_had_sends_nothing(zeyi):
    def broken():
        raise ConfigError("secret test/zeyi-outbound could not be read (ResourceNotFound)")

    client = ZeyiClient(zeyi.url, broken, connect_timeout_seconds=1, read_timeout_seconds=1,
                        encrypt=False)
    with pytest.raises(ConfigError):
        client.send(send_body())
    assert zeyi.requests_log() == []


# -- answers the simulator never gives: a scripted server ------------------------------------------

class Scripted:
    """An HTTP/1.1 keep-alive server on 127.0.0.1 answering each POST with the next scripted
    (status, body bytes); counts TCP connections and requests."""

    def __init__(self, *answers: tuple[int, bytes]):
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                outer.connections += 1
                super().setup()

            def do_POST(self):  # noqa: N802
                outer.requests.append(self.rfile.read(int(self.headers["Content-Length"])))
                status, data = outer.answers.pop(0) if len(outer.answers) > 1 \
                    else outer.answers[0]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def envelope_bytes(**fields) -> bytes:
    value = {"success": True, "businessException": False, "errorCode": None, "message": None,
             "result": None, **fields}
    return json.dumps(value).encode()


@pytest.mark.parametrize("status, data", [
    (200, b'{"success": "true", "businessException": false}'),
    (200, b"[]"),
    (200, b'{"success": true}'),
    (200, b"\xff\xfe not utf-8"),
    (200, b""),
    (302, envelope_bytes()),
    (404, b"<html>not found</html>"),
    (500, envelope_bytes(success=False, errorCode="SYSTEM_ERROR")),
    (200, envelope_bytes(result="x" * 70_000)),
    (200, envelope_bytes(businessException=True)),  # success and refused at once
    (200, b"[" * 100_000),  # nested past any parser's recursion limit
])
def test_an_answer_that_is_not_a_trustworthy_envelope_is_an_unknown_outcome(status, data):
    with Scripted((status, data)) as server:
        with pytest.raises(UpstreamOutcomeUnknownError) as caught:
            client_for(server.url).send(send_body())
        assert len(server.requests) == 1
    assert caught.value.status == 502


@pytest.mark.parametrize("status, data, code", [
    (200, envelope_bytes(success=False, businessException=True, errorCode="E1", message="no"),
     "E1"),
    (200, envelope_bytes(success=False, businessException=True, message="duplicate"),
     "UPSTREAM_REJECTED"),
    (400, envelope_bytes(success=False, businessException=True, errorCode="APPROVAL_ACTIVE"),
     "APPROVAL_ACTIVE"),
])
def test_a_business_exception_is_a_rejection(status, data, code):
    with Scripted((status, data)) as server, pytest.raises(UpstreamRejectedError) as caught:
        client_for(server.url).send(send_body())
    assert (caught.value.error_code, caught.value.business) == (code, True)
    assert caught.value.message
    assert caught.value.answer.text == data.decode()


@pytest.mark.parametrize("status, data, code", [
    (200, envelope_bytes(success=False, errorCode="E1", message="no"), "E1"),
    (200, envelope_bytes(success=False), "UPSTREAM_SYSTEM_ERROR"),
    (401, envelope_bytes(success=False, errorCode="SIGN_INVALID"), "SIGN_INVALID"),
])
def test_a_failure_without_business_exception_leaves_the_outcome_open(status, data, code):
    with Scripted((status, data)) as server, pytest.raises(UpstreamSystemError) as caught:
        client_for(server.url).send(send_body())
    assert (caught.value.error_code, caught.value.status) == (code, 502)
    assert len(server.requests) == 1  # never retried: it may have created the approval


@pytest.mark.parametrize("data", [
    b'{"success":true,"businessException":false,"errorCode":null,"message":null,'
    b'"result":{"n":NaN,"i":-Infinity}}',
    envelope_bytes(result=10 ** 60),
    b'{"success":true,"businessException":false,"errorCode":null,"message":null,"result":'
    + b'[' * 40 + b']' * 40 + b'}',
])
def test_an_accepting_answer_is_kept_as_its_raw_text_whatever_it_holds(data):
    with Scripted((200, data)) as server:
        answer = client_for(server.url).send(send_body())
    assert answer.envelope["success"] is True
    assert answer.text == data.decode()


def test_a_warm_client_reuses_its_connection_but_not_after_an_idle_gap():
    now = [1000.0]
    with Scripted((200, envelope_bytes())) as server:
        client = client_for(server.url, monotonic=lambda: now[0])
        client.send(send_body("A"))
        now[0] += 5
        client.send(send_body("B"))
        assert server.connections == 1
        now[0] += 16  # longer than IDLE_RECONNECT_SECONDS: the pooled socket may be dead
        client.send(send_body("C"))
        assert server.connections == 2
        assert len(server.requests) == 3


@pytest.mark.parametrize("base_url", ["", "test.shjiuze.cn", "ftp://h", "https://", "https://h?x=1"])
def test_a_base_url_that_cannot_be_called_is_a_config_error(base_url):
    with pytest.raises(ConfigError) as caught:
        client_for(base_url)
    assert "ZEYI_BASE_URL" in caught.value.message


# -- the deadline: connect, write and every read together ----------------------------------------

class Trickle:
    """A raw HTTP server on loopback that answers one byte at a time, every ``gap`` seconds:
    each read gets a byte well within the read timeout, so only a total deadline ends the
    call. Records how many bytes it managed to write before the client hung up."""

    def __init__(self, answer: bytes, *, at_once: int = 0, gap: float = 0.05):
        self._answer = answer
        self._at_once = at_once
        self._gap = gap
        self.written = 0
        self.hung_up = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        connection, _ = self._listener.accept()
        with connection:
            connection.settimeout(5)
            connection.recv(65536)  # the request (small enough for one read here)
            stop = threading.Event()
            connection.sendall(self._answer[:self._at_once])
            self.written = self._at_once
            for byte in self._answer[self._at_once:]:
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    self.hung_up.set()
                    return
                self.written += 1
                if stop.wait(self._gap):
                    return
            # A client that went away shows as a reset on a later write, or EOF on a read.
            with contextlib.suppress(OSError):
                if connection.recv(1) == b"":
                    self.hung_up.set()

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._listener.close()
        self._thread.join(10)


def trickled_answer() -> bytes:
    body = envelope_bytes()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


@pytest.mark.parametrize("where", ["headers", "body"])
def test_an_answer_that_trickles_in_is_cut_at_the_deadline(where):
    answer = trickled_answer()
    # "body": the headers come at once, then the body byte by byte.
    at_once = answer.index(b"\r\n\r\n") + 4 if where == "body" else 0
    with Trickle(answer, at_once=at_once) as server:
        client = client_for(server.url, read_timeout_seconds=1.0, deadline_seconds=0.5)
        with pytest.raises(UpstreamOutcomeUnknownError) as caught:
            client.send(send_body())
        assert server.hung_up.wait(5), "the client kept the connection open"
    assert "deadline of 0.5 s" in caught.value.message
    assert caught.value.status == 504
    # Each byte came 0.05 s after the last, far within the 1 s read timeout: only the total
    # deadline can have ended the call, long before the whole answer was written.
    assert server.written < at_once + (len(answer) - at_once) // 2
    assert client._sleep.sleeps == []  # noqa: SLF001 - an unknown outcome is never retried


def test_after_the_deadline_the_broken_connection_is_never_reused(zeyi):
    with Trickle(trickled_answer()) as server:
        client = client_for(server.url, read_timeout_seconds=1.0, deadline_seconds=0.3)
        with pytest.raises(UpstreamOutcomeUnknownError):
            client.send(send_body())
    assert all(not adapter.poolmanager.pools for adapter in client._session.adapters.values())  # noqa: SLF001
