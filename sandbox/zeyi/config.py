"""The simulator's settings and the sandbox's test-only credentials."""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from sandbox.zeyi_protocol import Credential

DEFAULT_CREDENTIALS_PATH = Path(__file__).resolve().parent.parent / "credentials.json"
AUTO_DECIDE_RULES = ("off", "agree", "refuse", "terminate", "by-suffix")


def load_credentials(path: Path | str = DEFAULT_CREDENTIALS_PATH) -> tuple[Credential, Credential]:
    """(outbound, inbound) from a credentials.json shaped like sandbox/credentials.json."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return Credential.from_json(data["outbound"]), Credential.from_json(data["inbound"])


@dataclass(frozen=True)
class SimulatorConfig:
    outbound: Credential
    """What the gateway signs (and encrypts) its calls with; the simulator verifies with it."""
    inbound: Credential
    """What the simulator signs its token requests and callbacks with (and encrypts callbacks
    with, when ``encrypt_callbacks`` is on)."""
    host: str = "127.0.0.1"
    port: int = 8001
    gateway_url: str | None = None
    encrypt_requests: bool = False
    encrypt_callbacks: bool = False
    ip_whitelist: tuple[str, ...] = ()
    auto_decide: str = "off"
    auto_decide_delay_seconds: float = 1.0
    skew_seconds: int = 300
    callback_max_tries: int = 8
    callback_first_backoff_seconds: float = 0.2
    callback_max_backoff_seconds: float = 5.0
    callback_timeout_seconds: float = 10.0
    callback_concurrency: int = 16
    cancel_callback_delay_seconds: float = 0.5
    """Zeyi hears of a revoked instance from DingTalk a moment after it accepted the cancel."""
    legacy_sign: bool = False
    """Sign token requests and callbacks as Zeyi SDK 1.0.0 does, without the body; the gateway
    takes that only from an inbound credential marked ``legacySign``."""
    token_body: str = "{}"
    echo: bool = False
    """Print one readable line per send, cancel, decision and callback try (the command line
    turns it on; in-process test simulators stay quiet)."""
    verbose: bool = False
    """Also print every HTTP request the simulator serves, control API and inbox included."""

    def __post_init__(self):
        if self.auto_decide not in AUTO_DECIDE_RULES:
            raise ValueError(f"auto_decide must be one of {', '.join(AUTO_DECIDE_RULES)}")
        for cidr in self.ip_whitelist:
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError on a bad entry
