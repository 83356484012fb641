"""``make run`` and ``make demo`` as a user runs them: real subprocesses, real signals."""
from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sandbox.stack import port_is_free

PROJECT_DIR = Path(__file__).resolve().parents[2]


def _env(ports: dict[str, int]) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
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


def _processes_mentioning(ports: list[int]) -> list[str]:
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


def _start_run(ports: dict[str, int]) -> tuple[subprocess.Popen, queue.Queue]:
    process = subprocess.Popen([sys.executable, "-m", "sandbox.run"], cwd=PROJECT_DIR,
                               env=_env(ports), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return process, lines


def _wait_for(lines: queue.Queue, text: str, timeout_seconds: float) -> str:
    seen = []
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} not printed in {timeout_seconds} s; output:\n{''.join(seen)}")


@pytest.mark.timeout(200)
def test_make_run_starts_everything_and_leaves_nothing_behind():
    gateway, zeyi, aws = _free_ports(3)
    ports = {"SANDBOX_GATEWAY_PORT": gateway, "SANDBOX_ZEYI_PORT": zeyi,
             "SANDBOX_AWS_PORT": aws}
    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # and a second run works
        process, lines = _start_run(ports)
        try:
            output = _wait_for(lines, "Sandbox is up", 90)
            assert f"http://127.0.0.1:{gateway}" in output
            assert not any(port_is_free(port) for port in (gateway, zeyi, aws))
            assert len(_processes_mentioning([gateway, zeyi, aws])) >= 3
        finally:
            process.send_signal(stop_signal)
            assert process.wait(timeout=60) == 0
        _wait_for(lines, "sandbox: stopped", 5)
        deadline = time.monotonic() + 10
        while _processes_mentioning([gateway, zeyi, aws]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_mentioning([gateway, zeyi, aws]) == []
        assert all(port_is_free(port) for port in (gateway, zeyi, aws))


def test_make_run_names_a_busy_port_and_the_variable_to_change():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        gateway, zeyi = _free_ports(2)
        result = subprocess.run(
            [sys.executable, "-m", "sandbox.run"], cwd=PROJECT_DIR, capture_output=True,
            text=True, timeout=60, env=_env({"SANDBOX_GATEWAY_PORT": gateway,
                                             "SANDBOX_ZEYI_PORT": zeyi,
                                             "SANDBOX_AWS_PORT": port}))
    assert result.returncode != 0
    assert f"port {port}" in result.stderr
    assert "SANDBOX_AWS_PORT" in result.stderr


@pytest.mark.timeout(200)
def test_make_demo_runs_every_flow(stack):
    result = subprocess.run(
        [sys.executable, "-m", "sandbox.demo"], cwd=PROJECT_DIR, capture_output=True,
        text=True, timeout=180,
        env=_env({"SANDBOX_GATEWAY_PORT": stack.gateway_port,
                  "SANDBOX_ZEYI_PORT": stack.zeyi_port}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Every step did what it should" in result.stdout
    for status in ("AGREED", "REFUSED", "CANCELLING", "TERMINATED", "APPROVAL_ACTIVE"):
        assert status in result.stdout
