"""Start and stop the sandbox's processes: moto server, the Zeyi simulator, the gateway, and the
events poller (``sandbox.stream_poller``: Lambda's stream subscription, which Chalice's local
server does not run).

``sandbox.run`` (``make run``) and the end-to-end tests both use ``SandboxStack``, so the tests
exercise exactly what a developer runs. Each process gets its own process group, so stopping one
also stops whatever it spawned, and nothing is left behind; each also dies with the process that
started it, even one killed with SIGKILL (``sandbox.lifeline``).
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

from sandbox.lifeline import PARENT_PID_ENV

PROJECT_DIR = Path(__file__).resolve().parent.parent
CREDENTIALS_PATH = Path(__file__).with_name("credentials.json")
DEFAULT_LOG_DIR = PROJECT_DIR / ".sandbox" / "logs"
STAGE = "local"
REGION = "us-east-1"
GATEWAY_PORT_ENV, ZEYI_PORT_ENV, AWS_PORT_ENV = (
    "SANDBOX_GATEWAY_PORT", "SANDBOX_ZEYI_PORT", "SANDBOX_AWS_PORT")
DEFAULT_PORTS = {GATEWAY_PORT_ENV: 8000, ZEYI_PORT_ENV: 8001, AWS_PORT_ENV: 5000}
# The "internal app" of the sandbox: a queue that a rule on the stage's bus feeds with every
# approval event, as an internal team's own rule would (README, "Approval events").
INTERNAL_APP_QUEUE = "jinrun-internal-app-local"
INTERNAL_APP_RULE = "jinrun-internal-app-local"
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


def _tcp_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts connections on host:port. Used for the gateway, which binds only once
    its app is loaded: an HTTP probe would put a 405 line on the terminal at every start."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


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
    """One child process in its own process group, with a readiness probe.

    Output: with ``log_path`` and ``stderr_to_terminal`` off, everything goes to the file; with
    ``stderr_to_terminal``, stdout goes to the file and stderr to this terminal; without
    ``log_path``, both go to this terminal. The child gets ``SANDBOX_PARENT_PID`` and dies with
    this process (``sandbox.lifeline``).
    """

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str],
                 ready_url: str | None = None, ready_port: int | None = None,
                 ready_path: Path | None = None,
                 log_path: Path | None, stderr_to_terminal: bool = False,
                 fresh_log: bool = False, cwd: Path = PROJECT_DIR):
        self.name = name
        self.argv = argv
        self.env = dict(env, **{PARENT_PID_ENV: str(os.getpid())})
        self.ready_url = ready_url
        self.ready_port = ready_port
        self.ready_path = ready_path  # a process with no port: ready once it wrote this file
        self.log_path = log_path
        self.stderr_to_terminal = stderr_to_terminal
        self.fresh_log = fresh_log
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self._log_file = None

    def _ready(self) -> bool:
        if self.ready_path is not None:
            return self.ready_path.exists()
        if self.ready_port is not None:
            return _tcp_answers(self.ready_port)
        return _http_answers(self.ready_url)

    def start(self, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> ManagedProcess:
        """Start the process and wait until it answers. Raises StackError otherwise."""
        output = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            # A new run starts a new log; a restart within a run (the e2e tests) appends.
            self._log_file = open(self.log_path, "wb" if self.fresh_log else "ab")  # noqa: SIM115 - closed in stop()
            output = self._log_file
        errors = None if self.stderr_to_terminal else (subprocess.STDOUT if output else None)
        self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=output,
                                        stderr=errors, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise StackError(f"{self.name} exited with status {code} while starting"
                                 f"{self._log_hint()}")
            if self._ready():
                return self
            time.sleep(0.1)
        self.stop()
        where = self.ready_url or (f"port {self.ready_port}" if self.ready_path is None
                                   else f"{self.ready_path} (its status file)")
        raise StackError(f"{self.name} did not answer on {where} within"
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


@dataclass(frozen=True)
class PortHolder:
    pid: int
    command: str
    ours: bool
    """Started from this project's directory by the sandbox (an earlier ``make run``)."""


def port_holders(port: int) -> list[PortHolder]:
    """The processes listening on TCP ``port``, read from /proc (Linux). Empty elsewhere, or
    when the holder belongs to a user whose processes this one cannot inspect."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl, local address:port (hex), remote, state (0A: LISTEN), …
            if len(fields) > 9 and fields[3] == "0A" \
                    and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    holders = []
    if not inodes:
        return holders
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
            if not links & inodes:
                continue
            command = " ".join((entry / "cmdline").read_bytes().decode(
                errors="replace").replace("\0", " ").split())
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        holders.append(PortHolder(int(entry.name), command,
                                  ours=cwd == PROJECT_DIR and " sandbox." in f" {command}"))
    return holders


def shortened(command: str, limit: int = 100) -> str:
    """``command`` cut to about ``limit`` characters between two arguments, never inside one:
    a cut argument (``--po``) reads like a real one."""
    if len(command) <= limit:
        return command
    words = command.split(" ")
    kept = [words[0]]
    for word in words[1:]:
        if len(" ".join([*kept, word])) > limit:
            break
        kept.append(word)
    return " ".join(kept) + " …"


class PortsBusyError(StackError):
    """Some of the sandbox's ports are taken; ``holders`` are the processes found on them."""

    def __init__(self, message: str, ports: list[int], holders: list[PortHolder]):
        super().__init__(message)
        self.ports = ports
        self.holders = holders


@dataclass
class SandboxStack:
    """moto server + Zeyi simulator + the gateway (``sandbox.gateway``, Chalice's local server),
    on loopback ports of your choice.

    With ``log_dir`` (the tests) every process writes to ``log_dir/<name>.log``. Without it
    (``make run``) the simulator and the gateway's one line per request go to this terminal, the
    gateway's JSON logs and moto's request log to ``terminal_log_dir``, started afresh each run.
    """

    gateway_port: int = 8000
    zeyi_port: int = 8001
    aws_port: int = 5000
    log_dir: Path | None = None
    terminal_log_dir: Path = DEFAULT_LOG_DIR
    credentials_path: Path = CREDENTIALS_PATH
    simulator_args: list[str] = field(default_factory=list)
    gateway_env: dict[str, str] = field(default_factory=dict)
    gateway_settings: dict[str, str] = field(default_factory=dict)
    """Settings laid over the local stage's own (``sandbox.gateway --setting``): an environment
    variable cannot change one that .chalice/config.json sets, such as ALLOWED_SOURCE_IPS."""
    inbound_legacy_sign: bool = False
    """Mark the inbound credential ``legacySign``: the gateway then takes Zeyi SDK 1.0.0's
    header-only sign from the simulator (``--legacy-sign``)."""
    outbound_secret_override: dict | None = None
    """Bootstrap the outbound secret with this instead of credentials.json (to misconfigure)."""
    zeyi_url_override: str | None = None
    """Use this Zeyi instead of starting a simulator."""
    aws_request_log: bool = True
    """moto's request log (``moto.log``); without it moto runs ``--quiet``, a tenth cheaper per
    request. The tests' stacks leave it out: none of them reads it (``make run``'s keeps it)."""
    base_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    """The environment the children start from, captured when the stack is made."""
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda line: None
    _logs_started: set = field(default_factory=set)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def zeyi_url(self) -> str:
        return self.zeyi_url_override or f"http://127.0.0.1:{self.zeyi_port}"

    @property
    def aws_url(self) -> str:
        return f"http://127.0.0.1:{self.aws_port}"

    def _output(self, name: str) -> dict:
        """Where process ``name`` writes: ManagedProcess's log_path, stderr_to_terminal and
        fresh_log."""
        if self.log_dir is not None:
            path, to_terminal = self.log_dir / f"{name}.log", False
        elif name == "moto":
            path, to_terminal = self.terminal_log_dir / "moto.log", False
        elif name in ("gateway", "events"):
            path, to_terminal = self.terminal_log_dir / f"{name}.log", True
        else:
            return {"log_path": None}
        fresh = path not in self._logs_started
        self._logs_started.add(path)
        return {"log_path": path, "stderr_to_terminal": to_terminal, "fresh_log": fresh}

    def check_ports(self) -> None:
        """Raises PortsBusyError naming every busy port, what holds it, and the variables that
        move them."""
        wanted = [(self.aws_port, AWS_PORT_ENV, "moto server, the AWS emulator"),
                  (self.gateway_port, GATEWAY_PORT_ENV, "the gateway")]
        if self.zeyi_url_override is None:
            wanted.append((self.zeyi_port, ZEYI_PORT_ENV, "the Zeyi simulator"))
        lines, moves, busy, holders = [], [], [], []
        for port, env_name, what in wanted:
            if port_is_free(port):
                continue
            found = port_holders(port)
            busy.append(port)
            holders += found
            held = ", ".join(f"PID {h.pid} ({shortened(h.command)})" for h in found) \
                or "a process this user cannot inspect"
            lines.append(f"  port {port}, wanted for {what} ({env_name}): held by {held}")
            moves.append(f"{env_name}={port + 100}")
        if not lines:
            return
        message = ["these ports on 127.0.0.1 are already in use:", *lines,
                   f"Stop what holds them, or choose other ports, e.g. {' '.join(moves)} make run"]
        ours = sorted({h.pid for h in holders if h.ours})
        if ours:
            pids = " ".join(map(str, ours))
            message.append(f"{'PIDs' if len(ours) > 1 else 'PID'} {pids}"
                           f" {'are' if len(ours) > 1 else 'is'} an earlier sandbox of this"
                           f" project; stop {'them' if len(ours) > 1 else 'it'} with: kill {pids}")
        raise PortsBusyError("\n".join(message), busy, holders)

    @property
    def poller_status_path(self) -> Path:
        """Where the events poller writes what it has done (sandbox.stream_poller)."""
        return (self.log_dir or self.terminal_log_dir) / "events-poller.json"

    def start(self) -> SandboxStack:
        """Start every process, in order, each ready before the next. Raises StackError."""
        self.check_ports()
        try:
            self.start_aws()
            for line in self.bootstrap():
                self.progress(f"  {line}")
            if self.zeyi_url_override is None:
                self.start_simulator()
            self.start_gateway()
            self.start_poller()
        except BaseException:
            self.stop()
            raise
        return self

    def start_aws(self) -> None:
        self.progress(f"starting moto server (DynamoDB, Secrets Manager, EventBridge, SQS) on"
                      f" {self.aws_url}")
        env = dict(self.base_env, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION=REGION)
        self.processes["aws"] = ManagedProcess(
            "moto server", [sys.executable, "-m", "sandbox.moto_server", "-H", "127.0.0.1",
                            "-p", str(self.aws_port),
                            *([] if self.aws_request_log else ["--quiet"])],
            env=env, ready_url=f"{self.aws_url}/moto-api/", **self._output("moto"),
        ).start()

    def stage_environment(self) -> dict[str, str]:
        from ops.bootstrap import stage_environment

        return stage_environment(STAGE)

    def aws_client(self, service: str):
        """A client of the sandbox's AWS (moto server)."""
        import boto3

        session = boto3.session.Session(aws_access_key_id="testing",
                                        aws_secret_access_key="testing", region_name=REGION)
        return session.client(service, endpoint_url=self.aws_url)

    def bootstrap(self) -> list[str]:
        """Create the local stage's tables, secrets and event resources with the deploy path's
        own bootstrap, and subscribe the sandbox's internal app to the events."""
        from ops.bootstrap import bootstrap
        from ops.events import EventResources, reconcile_event_resources

        env = self.stage_environment()
        credentials = json.loads(self.credentials_path.read_text(encoding="utf-8"))
        outbound = self.outbound_secret_override or credentials["outbound"]
        inbound = dict(credentials["inbound"])
        if self.inbound_legacy_sign:
            inbound["legacySign"] = True
        lines = bootstrap(
            self.aws_client("dynamodb"), self.aws_client("secretsmanager"),
            approvals_table=env["APPROVALS_TABLE"], nonces_table=env["NONCES_TABLE"],
            secrets={
                env["OUTBOUND_SECRET_ID"]: json.dumps(outbound),
                env["INBOUND_SECRET_ID"]: json.dumps({"credentials": [inbound]}),
                env["TOKEN_SECRET_ID"]: json.dumps({"keys": [secrets.token_urlsafe(48)]}),
            })
        resources = EventResources(env["EVENT_BUS_NAME"])
        lines += reconcile_event_resources(self.aws_client("events"), self.aws_client("sqs"),
                                           resources, {"app": "jinrun-approval-gateway",
                                                       "stage": STAGE})
        lines.append(self.subscribe_internal_app(resources.bus))
        # File fields: the attachments bucket, as the deploy path's bootstrap makes it.
        from ops.files_bucket import reconcile_attachments_bucket

        lines += reconcile_attachments_bucket(
            self.aws_client("s3"), env["ATTACHMENTS_BUCKET"], region=REGION,
            tags={"app": "jinrun-approval-gateway", "stage": STAGE}, retention_days=90,
            tls_only=False)  # moto server is plain HTTP here, and denies reads under that policy
        return lines

    def subscribe_internal_app(self, bus: str) -> str:
        """A queue for the sandbox's internal app, and a rule that sends it every approval
        event of the bus (what an internal team sets up for itself)."""
        from chalicelib.approvals.events import SOURCE

        sqs, bridge = self.aws_client("sqs"), self.aws_client("events")
        url = sqs.create_queue(QueueName=INTERNAL_APP_QUEUE)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        bridge.put_rule(Name=INTERNAL_APP_RULE, EventBusName=bus,
                        EventPattern=json.dumps({"source": [SOURCE]}))
        bridge.put_targets(Rule=INTERNAL_APP_RULE, EventBusName=bus,
                           Targets=[{"Id": "internal-app", "Arn": arn}])
        return f"queue {INTERNAL_APP_QUEUE} (the internal app) gets every approval event of {bus}"

    @property
    def internal_app_queue_url(self) -> str:
        return self.aws_client("sqs").get_queue_url(QueueName=INTERNAL_APP_QUEUE)["QueueUrl"]

    def start_simulator(self) -> None:
        self.progress(f"starting the Zeyi simulator on {self.zeyi_url}")
        argv = [sys.executable, "-m", "sandbox.zeyi", "--host", "127.0.0.1",
                "--port", str(self.zeyi_port), "--gateway-url", self.gateway_url,
                "--credentials", str(self.credentials_path), *self.simulator_args]
        self.processes["zeyi"] = ManagedProcess(
            "Zeyi simulator", argv, env=dict(self.base_env, PYTHONUNBUFFERED="1"),
            ready_url=f"{self.zeyi_url}/_control/health", **self._output("zeyi-simulator"),
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
            # The file links approvers click point at this gateway (the local stage names none).
            "PUBLIC_BASE_URL": self.gateway_url,
        })
        env.update(self.gateway_env)
        return env

    def start_gateway(self) -> None:
        self.progress(f"starting the gateway (Chalice's local server, stage {STAGE}) on"
                      f" {self.gateway_url}")
        argv = [sys.executable, "-m", "sandbox.gateway", "--stage", STAGE, "--host", "127.0.0.1",
                "--port", str(self.gateway_port),
                *(f"--setting={name}={value}" for name, value in self.gateway_settings.items())]
        self.processes["gateway"] = ManagedProcess(
            "the gateway", argv, env=self.gateway_environment(), ready_port=self.gateway_port,
            **self._output("gateway"),
        ).start()

    def start_poller(self) -> None:
        self.progress("starting the events poller (the approvals table's stream → EventBridge)")
        self.poller_status_path.unlink(missing_ok=True)
        # It imports app.py itself: the local stage's settings, as chalice local gives them to
        # the gateway, over the gateway's environment (moto's endpoint and credentials).
        env = {**self.gateway_environment(), **self.stage_environment()}
        argv = [sys.executable, "-m", "sandbox.stream_poller",
                "--status-file", str(self.poller_status_path)]
        self.processes["events"] = ManagedProcess(
            "the events poller", argv, env=env, ready_path=self.poller_status_path,
            **self._output("events"),
        ).start()

    def poller_status(self) -> dict:
        """What the events poller has done so far (sandbox.stream_poller.write_status)."""
        return json.loads(self.poller_status_path.read_text(encoding="utf-8"))

    def stop_gateway(self) -> None:
        gateway = self.processes.pop("gateway", None)
        if gateway is not None:
            gateway.stop()

    def dead(self) -> list[str]:
        """Names of the processes that have exited on their own."""
        return [process.name for process in self.processes.values() if not process.running]

    def stop(self) -> None:
        """Stop every process this stack started, gateway first. Safe to call twice."""
        for name in ("gateway", "events", "zeyi", "aws"):
            process = self.processes.pop(name, None)
            if process is not None:
                process.stop()

    def __enter__(self) -> SandboxStack:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
