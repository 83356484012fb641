"""Start and stop the sandbox's three processes: moto server, the Zeyi simulator, the gateway.

``sandbox.run`` (``make run``) and the end-to-end tests both use ``SandboxStack``, so the tests
exercise exactly what a developer runs. Each process gets its own process group, so stopping one
also stops whatever it spawned, and nothing is left behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
CREDENTIALS_PATH = Path(__file__).with_name("credentials.json")
DEFAULT_LOG_DIR = PROJECT_DIR / ".sandbox" / "logs"
STAGE = "local"
REGION = "us-east-1"
GATEWAY_PORT_ENV, ZEYI_PORT_ENV, AWS_PORT_ENV = (
    "SANDBOX_GATEWAY_PORT", "SANDBOX_ZEYI_PORT", "SANDBOX_AWS_PORT")
DEFAULT_PORTS = {GATEWAY_PORT_ENV: 8000, ZEYI_PORT_ENV: 8001, AWS_PORT_ENV: 5000}
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0


class StackError(RuntimeError):
    """The sandbox could not start; the message says what to do."""


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ports_from_env(environ=os.environ) -> dict[str, int]:
    """The three ports, from SANDBOX_*_PORT or their defaults. Raises StackError on a bad value."""
    ports = {}
    for name, default in DEFAULT_PORTS.items():
        raw = environ.get(name, "").strip()
        if not raw:
            ports[name] = default
            continue
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise StackError(f"{name}={raw!r} is not a port number")
        ports[name] = int(raw)
    return ports


def _http_answers(url: str, method: str = "GET") -> bool:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


class ManagedProcess:
    """One child process in its own process group, with a readiness probe."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], ready_url: str,
                 log_path: Path | None, cwd: Path = PROJECT_DIR):
        self.name = name
        self.argv = argv
        self.env = env
        self.ready_url = ready_url
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self._log_file = None

    def start(self, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> ManagedProcess:
        """Start the process and wait until it answers HTTP. Raises StackError otherwise."""
        output = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            output = self._log_file
        self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=output,
                                        stderr=subprocess.STDOUT if output else None,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise StackError(f"{self.name} exited with status {code} while starting"
                                 f"{self._log_hint()}")
            if _http_answers(self.ready_url):
                return self
            time.sleep(0.1)
        self.stop()
        raise StackError(f"{self.name} did not answer on {self.ready_url} within"
                         f" {timeout_seconds:.0f} s{self._log_hint()}")

    def _log_hint(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        return f"; see {self.log_path}. Last output:\n{tail}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM the whole process group, then SIGKILL it if it does not end in time."""
        process = self.process
        if process is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=timeout_seconds)
                    # The leader is gone; make sure nothing it spawned survives it.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclass
class SandboxStack:
    """moto server + Zeyi simulator + ``chalice local``, on loopback ports of your choice.

    ``log_dir=None`` lets the simulator and the gateway write to this terminal (moto's request
    log always goes to a file: it is noisy).
    """

    gateway_port: int = 8000
    zeyi_port: int = 8001
    aws_port: int = 5000
    log_dir: Path | None = None
    credentials_path: Path = CREDENTIALS_PATH
    simulator_args: list[str] = field(default_factory=list)
    gateway_env: dict[str, str] = field(default_factory=dict)
    outbound_secret_override: dict | None = None
    """Bootstrap the outbound secret with this instead of credentials.json (to misconfigure)."""
    zeyi_url_override: str | None = None
    """Use this Zeyi instead of starting a simulator."""
    base_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    """The environment the children start from, captured when the stack is made."""
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda line: None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def zeyi_url(self) -> str:
        return self.zeyi_url_override or f"http://127.0.0.1:{self.zeyi_port}"

    @property
    def aws_url(self) -> str:
        return f"http://127.0.0.1:{self.aws_port}"

    def _log(self, name: str, *, always: bool = False) -> Path | None:
        if self.log_dir is not None:
            return self.log_dir / f"{name}.log"
        return DEFAULT_LOG_DIR / f"{name}.log" if always else None

    def check_ports(self) -> None:
        """Raises StackError naming the busy port and the variable that moves it."""
        wanted = [(self.aws_port, AWS_PORT_ENV, "moto server (AWS emulator)"),
                  (self.gateway_port, GATEWAY_PORT_ENV, "the gateway (chalice local)")]
        if self.zeyi_url_override is None:
            wanted.append((self.zeyi_port, ZEYI_PORT_ENV, "the Zeyi simulator"))
        for port, env_name, what in wanted:
            if not port_is_free(port):
                raise StackError(
                    f"port {port} on 127.0.0.1, wanted for {what}, is already in use. Stop"
                    f" whatever uses it (is another sandbox running?) or choose another port,"
                    f" e.g. {env_name}={port + 100} make run")

    def start(self) -> SandboxStack:
        """Start all three, in order, each ready before the next. Raises StackError."""
        self.check_ports()
        try:
            self.start_aws()
            for line in self.bootstrap():
                self.progress(f"  {line}")
            if self.zeyi_url_override is None:
                self.start_simulator()
            self.start_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def start_aws(self) -> None:
        self.progress(f"starting moto server (DynamoDB + Secrets Manager) on {self.aws_url}")
        env = dict(self.base_env, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION=REGION)
        self.processes["aws"] = ManagedProcess(
            "moto server", [sys.executable, "-m", "sandbox.moto_server", "-H", "127.0.0.1",
                            "-p", str(self.aws_port)],
            env=env, ready_url=f"{self.aws_url}/moto-api/", log_path=self._log("moto", always=True),
        ).start()

    def stage_environment(self) -> dict[str, str]:
        from ops.bootstrap import stage_environment

        return stage_environment(STAGE)

    def bootstrap(self) -> list[str]:
        """Create the local stage's tables and secrets with the deploy path's own bootstrap."""
        import boto3

        from ops.bootstrap import bootstrap

        env = self.stage_environment()
        credentials = json.loads(self.credentials_path.read_text(encoding="utf-8"))
        outbound = self.outbound_secret_override or credentials["outbound"]
        session = boto3.session.Session(aws_access_key_id="testing",
                                        aws_secret_access_key="testing", region_name=REGION)
        return bootstrap(
            session.client("dynamodb", endpoint_url=self.aws_url),
            session.client("secretsmanager", endpoint_url=self.aws_url),
            approvals_table=env["APPROVALS_TABLE"], nonces_table=env["NONCES_TABLE"],
            secrets={
                env["OUTBOUND_SECRET_ID"]: json.dumps(outbound),
                env["INBOUND_SECRET_ID"]: json.dumps({"credentials": [credentials["inbound"]]}),
                env["TOKEN_SECRET_ID"]: json.dumps({"keys": [secrets.token_urlsafe(48)]}),
            })

    def start_simulator(self) -> None:
        self.progress(f"starting the Zeyi simulator on {self.zeyi_url}")
        argv = [sys.executable, "-m", "sandbox.zeyi_simulator", "--host", "127.0.0.1",
                "--port", str(self.zeyi_port), "--gateway-url", self.gateway_url,
                "--credentials", str(self.credentials_path), *self.simulator_args]
        self.processes["zeyi"] = ManagedProcess(
            "Zeyi simulator", argv, env=dict(self.base_env, PYTHONUNBUFFERED="1"),
            ready_url=f"{self.zeyi_url}/_control/health", log_path=self._log("zeyi-simulator"),
        ).start()

    def gateway_environment(self) -> dict[str, str]:
        env = {name: value for name, value in self.base_env.items()
               if name not in {"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}}
        env.update({
            # chalice local overlays the stage's environment_variables on these; the local stage
            # deliberately sets neither ZEYI_BASE_URL nor AWS_ENDPOINT_URL, so these stay.
            "AWS_ENDPOINT_URL": self.aws_url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
            "ZEYI_BASE_URL": self.zeyi_url, "PYTHONUNBUFFERED": "1",
        })
        env.update(self.gateway_env)
        return env

    def start_gateway(self) -> None:
        self.progress(f"starting the gateway (chalice local --stage {STAGE}) on"
                      f" {self.gateway_url}")
        chalice = Path(sys.executable).with_name("chalice")
        argv = [str(chalice) if chalice.exists() else "chalice", "local", "--stage", STAGE,
                "--host", "127.0.0.1", "--port", str(self.gateway_port), "--no-autoreload"]
        self.processes["gateway"] = ManagedProcess(
            "the gateway (chalice local)", argv, env=self.gateway_environment(),
            ready_url=f"{self.gateway_url}/auth/token", log_path=self._log("gateway"),
        ).start()

    def stop_gateway(self) -> None:
        gateway = self.processes.pop("gateway", None)
        if gateway is not None:
            gateway.stop()

    def dead(self) -> list[str]:
        """Names of the processes that have exited on their own."""
        return [process.name for process in self.processes.values() if not process.running]

    def stop(self) -> None:
        """Stop every process this stack started, gateway first. Safe to call twice."""
        for name in ("gateway", "zeyi", "aws"):
            process = self.processes.pop(name, None)
            if process is not None:
                process.stop()

    def __enter__(self) -> SandboxStack:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
