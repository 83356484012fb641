"""``make run`` and ``make demo`` as a user runs them: real subprocesses, real signals."""
from __future__ import annotations

import contextlib
import json
import os
import pty
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from sandbox.stack import port_is_free
from tests.e2e.client import send_body

PROJECT_DIR = Path(__file__).resolve().parents[2]


def _env(ports: dict[str, int], **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env.update({name: str(port) for name, port in ports.items()})
    return env


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _sandbox_ports() -> dict[str, int]:
    gateway, zeyi, aws = _free_ports(3)
    return {"SANDBOX_GATEWAY_PORT": gateway, "SANDBOX_ZEYI_PORT": zeyi, "SANDBOX_AWS_PORT": aws}


def _processes_mentioning(ports) -> list[str]:
    """Command lines of live processes started for these ports (by the sandbox)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode(errors="replace") for word in argv if word]
        if any(str(port) in words for port in ports) and any(
                "sandbox" in w or "chalice" in w or "moto" in w for w in words):
            found.append(" ".join(words))
    return found


class Run:
    """``python -m sandbox.run`` as a user starts it, its output collected line by line."""

    def __init__(self, ports: dict[str, int], log_dir: Path, stdin=subprocess.DEVNULL):
        self.ports = ports
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandbox.run"], cwd=PROJECT_DIR, stdin=stdin,
            env=_env(ports, SANDBOX_LOG_DIR=str(log_dir)), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_seconds: float) -> str:
        deadline = time.monotonic() + timeout_seconds
        while not any(text in line for line in self.lines):
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed in {timeout_seconds} s; output:\n"
                                     f"{self.output}")
            self.lines.append(line)
        return self.output

    def stop(self, stop_signal=signal.SIGINT) -> int:
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(stop_signal)
        try:
            return self.process.wait(timeout=60)
        finally:
            with contextlib.suppress(AssertionError):
                self.wait_for("sandbox: stopped", 5)


def _assert_nothing_left(ports) -> None:
    deadline = time.monotonic() + 10
    while (_processes_mentioning(ports) or not all(port_is_free(port) for port in ports)) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(ports) == []
    assert all(port_is_free(port) for port in ports)


NOISE = ("IAMAuthorizer", "warnings.warn", "Found credentials", "Found endpoint",
         'HTTP/1.1" 405', '"level"', "Traceback", "\x1b[")


@pytest.mark.timeout(240)
def test_make_run_starts_everything_and_leaves_nothing_behind(tmp_path):
    ports = _sandbox_ports()
    gateway, zeyi = ports["SANDBOX_GATEWAY_PORT"], ports["SANDBOX_ZEYI_PORT"]
    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # and a second run works
        run = Run(ports, tmp_path)
        try:
            output = run.wait_for("Sandbox is up", 90)
            assert f"http://127.0.0.1:{gateway}" in output
            assert f"http://127.0.0.1:{zeyi}/" in output  # the inbox page
            assert not any(port_is_free(port) for port in ports.values())
            assert len(_processes_mentioning(ports.values())) >= 3
        finally:
            assert run.stop(stop_signal) == 0
        _assert_nothing_left(ports.values())


@pytest.mark.timeout(240)
def test_make_run_shows_one_readable_line_per_request_and_logs_json_to_files(tmp_path):
    ports = _sandbox_ports()
    gateway = f"http://127.0.0.1:{ports['SANDBOX_GATEWAY_PORT']}"
    zeyi = f"http://127.0.0.1:{ports['SANDBOX_ZEYI_PORT']}"
    for name in ("gateway.log", "events.log", "moto.log"):
        (tmp_path / name).write_text("A LINE FROM AN EARLIER RUN\n")
    run = Run(ports, tmp_path)
    try:
        banner = run.wait_for("Ctrl-C stops every process", 90)
        started_at = len(run.lines)
        code = f"RUN-{os.getpid()}"
        # The banner's own walk-through: agree waits for the callback, so the next GET is AGREED.
        assert "waitSeconds=10" in banner
        assert requests.post(f"{gateway}/audit/send", json=send_body(code), timeout=30).ok
        assert requests.get(f"{gateway}/audit/{code}", timeout=30).json()["result"][
            "status"] == "PENDING"
        requests.post(f"{zeyi}/_control/approvals/{code}/agree?waitSeconds=10", timeout=30)
        assert requests.get(f"{gateway}/audit/{code}", timeout=30).json()["result"][
            "status"] == "AGREED"
        assert requests.post(f"{gateway}/audit/send", json=send_body(code),
                             timeout=30).status_code == 409
        requests.get(f"{zeyi}/_inbox/gateway/{code}", timeout=30)  # an inbox poll: not shown
        run.wait_for(f"POST /audit/send 409 APPROVAL_ACTIVE: code {code}", 10)
        run.wait_for(f"[events]  {code} #3 Approval Agreed (AGREED)", 30)
    finally:
        assert run.stop() == 0
    after = run.lines[started_at:]
    shown = "".join(after)
    for line in after:
        assert line.startswith(("[gateway] ", "[zeyi]    ", "[events]  ", "sandbox: ")) \
            or not line.strip(), line
    assert "[gateway] POST /audit/send 200 PENDING (" in shown
    assert f"[gateway] GET /audit/{code} 200 PENDING (" in shown
    assert f"[gateway] GET /audit/{code} 200 AGREED (" in shown
    assert shown.count(f"GET /audit/{code} ") == 2  # the inbox's poll left no line
    assert f"[zeyi]    send {code} → OK: PENDING as proc-" in shown
    assert f"[zeyi]    agree {code} " in shown
    assert "[gateway] POST /dingtalkAudit/callback 200 AGREED applied (" in shown
    assert (f"[zeyi]    callback {code} finish/agree try 1/8 → HTTP 200 success status=AGREED"
            in shown)
    assert f"APPROVAL_ACTIVE: code {code} already has an approval" in shown
    # One line per approval event the poller published (the refused send was none).
    assert [line.strip() for line in after if line.startswith(f"[events]  {code} ")] == [
        f"[events]  {code} #1 Approval Submitted (SUBMITTING)",
        f"[events]  {code} #2 Approval Pending (PENDING)",
        f"[events]  {code} #3 Approval Agreed (AGREED)"]
    for noise in NOISE:
        assert noise not in run.output, noise
    gateway_log = (tmp_path / "gateway.log").read_text(encoding="utf-8").splitlines()
    moto_log = (tmp_path / "moto.log").read_text(encoding="utf-8")
    assert "A LINE FROM AN EARLIER RUN" not in gateway_log + [moto_log]  # a run starts afresh
    assert gateway_log and all(json.loads(line) for line in gateway_log if line.strip())
    assert any("APPROVAL_ACTIVE" in line for line in gateway_log)
    assert "POST / HTTP/1.1" in moto_log and "\x1b[" not in moto_log
    events_log = (tmp_path / "events.log").read_text(encoding="utf-8").splitlines()
    assert "A LINE FROM AN EARLIER RUN" not in events_log
    assert any(json.loads(line).get("message") == "approval events published"
               for line in events_log if line.strip())


@pytest.mark.timeout(200)
def test_killing_make_run_outright_leaves_no_orphan(tmp_path):
    ports = _sandbox_ports()
    run = Run(ports, tmp_path)
    try:
        run.wait_for("Sandbox is up", 90)
        assert len(_processes_mentioning(ports.values())) >= 3
        run.process.kill()  # SIGKILL: make run cannot stop anything itself
        run.process.wait(timeout=30)
    finally:
        run.stop()
    _assert_nothing_left(ports.values())


def test_make_run_names_every_busy_port_and_what_holds_it():
    ports = _sandbox_ports()
    with socket.socket() as aws, socket.socket() as gateway:
        aws.bind(("127.0.0.1", 0))
        gateway.bind(("127.0.0.1", 0))
        aws.listen()
        gateway.listen()
        ports.update(SANDBOX_AWS_PORT=aws.getsockname()[1],
                     SANDBOX_GATEWAY_PORT=gateway.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "sandbox.run"], cwd=PROJECT_DIR, capture_output=True,
            stdin=subprocess.DEVNULL, text=True, timeout=60, env=_env(ports))
    assert result.returncode != 0
    for name in ("SANDBOX_AWS_PORT", "SANDBOX_GATEWAY_PORT"):
        assert f"port {ports[name]}, wanted for" in result.stderr
        assert f"{name}={ports[name] + 100}" in result.stderr
    assert result.stderr.count(f"held by PID {os.getpid()} ") == 2
    assert "SANDBOX_ZEYI_PORT" not in result.stderr  # that one was free
    assert "earlier sandbox" not in result.stderr  # the test is not a sandbox
    assert _processes_mentioning(ports.values()) == []  # nothing was started


def _orphan_simulator(port: int) -> subprocess.Popen:
    """A simulator left over from an earlier sandbox: no parent to die with."""
    orphan = subprocess.Popen([sys.executable, "-m", "sandbox.zeyi", "--port", str(port),
                               "--quiet"], cwd=PROJECT_DIR, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    return orphan


def test_make_run_names_an_earlier_sandbox_and_how_to_stop_it():
    ports = _sandbox_ports()
    orphan = _orphan_simulator(ports["SANDBOX_ZEYI_PORT"])
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sandbox.run"], cwd=PROJECT_DIR, capture_output=True,
            stdin=subprocess.DEVNULL, text=True, timeout=60, env=_env(ports))
        assert orphan.poll() is None  # not a terminal: nothing is stopped without asking
    finally:
        orphan.kill()
        orphan.wait(timeout=10)
    assert result.returncode != 0
    assert (f"PID {orphan.pid} is an earlier sandbox of this project; stop it with:"
            f" kill {orphan.pid}") in result.stderr


@pytest.mark.timeout(200)
def test_at_a_terminal_make_run_offers_to_stop_an_earlier_sandbox(tmp_path):
    ports = _sandbox_ports()
    orphan = _orphan_simulator(ports["SANDBOX_ZEYI_PORT"])
    primary, secondary = pty.openpty()
    try:
        run = Run(ports, tmp_path, stdin=secondary)
        os.write(primary, b"y\n")  # read when make run asks "[y/N]"
        try:
            output = run.wait_for("Sandbox is up", 90)
            assert f"stop the earlier sandbox (PIDs {orphan.pid}) now? [y/N]" in output
            assert orphan.wait(timeout=10) is not None  # it was stopped
        finally:
            assert run.stop() == 0
    finally:
        os.close(primary)
        os.close(secondary)
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait(timeout=10)
    _assert_nothing_left(ports.values())


@pytest.mark.timeout(200)
def test_make_demo_runs_every_flow(stack):
    # The demo is the sandbox's internal app: it starts from an empty queue, as after make run.
    stack.aws_client("sqs").purge_queue(QueueUrl=stack.internal_app_queue_url)
    result = subprocess.run(
        [sys.executable, "-m", "sandbox.demo"], cwd=PROJECT_DIR, capture_output=True,
        text=True, timeout=180,
        env=_env({"SANDBOX_GATEWAY_PORT": stack.gateway_port,
                  "SANDBOX_ZEYI_PORT": stack.zeyi_port, "SANDBOX_AWS_PORT": stack.aws_port}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Every step did what it should" in result.stdout
    for status in ("AGREED", "REFUSED", "CANCELLING", "TERMINATED", "APPROVAL_ACTIVE"):
        assert status in result.stdout
    # The idempotent retry: the first answer again, one send at Zeyi, another body refused.
    for line in ("✓ the retry got the first answer again: same status, same body",
                 "✓ Zeyi received the send once", "✓ 422 IDEMPOTENCY_KEY_REUSED"):
        assert line in result.stdout
    # The events the sandbox's internal app received, for each flow.
    for events in ("Submitted, Pending, Agreed", "Submitted, Pending, Refused",
                   "Submitted, Pending, Cancelling, Terminated", "Submitted, Pending",
                   "Submitted, Pending, Agreed, Revoked"):
        assert f"✓ events: {events}\n" in result.stdout
    assert re.search(r"#3 Approval Agreed +PENDING → AGREED  eventId [0-9a-f]{8}…  王经理: demo: agree",
                     result.stdout)
    assert "✓ the exact bytes, under the Chinese name\n" in result.stdout
    # What a person needs: one line per call, short codes, and the cancel's lines in the order
    # things happened; the raw envelopes only when asked for.
    assert '"businessException"' not in result.stdout
    for clumsy in ("try(ies)", "attempt(s)", "callback(s)", "terminate/-"):
        assert clumsy not in result.stdout
    codes = set(re.findall(r"DEMO-\d{6}-[A-Z]\b", result.stdout))
    assert len(codes) == 6 and max(map(len, codes)) <= 15, codes
    lines = result.stdout.splitlines()
    cancel = next(code for code in codes if code.endswith("-C"))

    def first(*words: str) -> int:
        return next(i for i, line in enumerate(lines) if all(word in line for word in words))

    assert (first(f"POST /audit/cancel {cancel}", "→ 200 CANCELLING")
            < first("✓ Zeyi accepted the cancel")
            < first("Zeyi calls back: terminate", "→ delivered after 1 try;", "TERMINATED applied")
            < first(f"GET /audit/{cancel}", "→ 200 TERMINATED")
            < first("✓ TERMINATED after the terminate callback"))

    raw = subprocess.run(
        [sys.executable, "-m", "sandbox.demo", "--raw"], cwd=PROJECT_DIR, capture_output=True,
        text=True, timeout=180,
        env=_env({"SANDBOX_GATEWAY_PORT": stack.gateway_port,
                  "SANDBOX_ZEYI_PORT": stack.zeyi_port, "SANDBOX_AWS_PORT": stack.aws_port}))
    assert raw.returncode == 0, raw.stdout + raw.stderr
    lines = raw.stdout.splitlines()
    sent = next(i for i, line in enumerate(lines) if "POST /audit/send" in line)
    assert json.loads(lines[sent + 1])["result"]["status"] == "PENDING"  # the envelope, verbatim


@pytest.mark.timeout(120)
def test_the_local_gateway_takes_a_burst_of_simultaneous_connections(stack):
    """300 clients connect at the same instant; every one is answered (http.server's default
    backlog of 5 reset most of them). The route answers without AWS, so the emulator's speed
    plays no part."""
    clients = 300
    barrier = threading.Barrier(clients, timeout=30)
    request = (f"PUT /audit/send HTTP/1.1\r\nHost: 127.0.0.1:{stack.gateway_port}\r\n"
               "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()

    def client(_):
        barrier.wait()
        try:
            with socket.create_connection(("127.0.0.1", stack.gateway_port), timeout=60) as sock:
                sock.sendall(request)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
        except OSError as error:
            return f"{type(error).__name__}: {error}"
        return answer.split(b"\r\n", 1)[0].decode()

    with ThreadPoolExecutor(max_workers=clients) as pool:
        status_lines = list(pool.map(client, range(clients)))
    assert status_lines == ["HTTP/1.1 405 Method Not Allowed"] * clients, sorted(set(status_lines))


def _switched_stack(tmp_path, **switches: str):
    """The stack make run starts with these SANDBOX_* switches, its output in files."""
    from sandbox.run import build_stack
    from tests.e2e.client import Sandbox

    stack = build_stack(_env(_sandbox_ports(), **switches))
    stack.log_dir = tmp_path
    stack.start()
    return stack, Sandbox(stack.gateway_url, stack.zeyi_url)


@pytest.mark.timeout(180)
def test_make_run_can_take_zeyis_header_only_sign_and_an_allowlist_it_is_on(tmp_path):
    stack, sandbox = _switched_stack(tmp_path, SANDBOX_LEGACY_SIGN="true",
                                     SANDBOX_ALLOWED_SOURCE_IPS="127.0.0.1")
    try:
        code = sandbox.new_code("LEGACY")
        assert sandbox.send(code).status_code == 200
        sandbox.decide(code, "agree")
        assert sandbox.wait_status(code, "AGREED")["status"] == "AGREED"
        assert [c["status"] for c in sandbox.zeyi_approval(code, 10)["callbacks"]] == [
            "delivered"]
    finally:
        stack.stop()


@pytest.mark.timeout(180)
def test_make_runs_allowlist_turns_zeyi_away_when_it_is_not_on_it(tmp_path):
    stack, sandbox = _switched_stack(tmp_path, SANDBOX_ALLOWED_SOURCE_IPS="203.0.113.7")
    try:
        code = sandbox.new_code("ALLOW")
        assert sandbox.send(code).status_code == 200  # the allowlist guards Zeyi's routes only
        sandbox.decide(code, "agree")
        deadline = time.monotonic() + 30
        tries = []
        while not tries and time.monotonic() < deadline:
            tries = sandbox.zeyi_approval(code)["callbacks"][0]["tries"]
            time.sleep(0.2)
        assert "IP_NOT_ALLOWED" in tries[0]["error"]  # the token request was refused
        assert sandbox.status(code) == "PENDING"
    finally:
        stack.stop()
