"""``python -m sandbox.zeyi``: the simulator as a process (``make run`` starts it this way)."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from sandbox.lifeline import die_with_parent
from sandbox.terminal import say
from sandbox.zeyi.config import (
    AUTO_DECIDE_RULES,
    DEFAULT_CREDENTIALS_PATH,
    SimulatorConfig,
    load_credentials,
)
from sandbox.zeyi.simulator import ZeyiSimulator


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m sandbox.zeyi",
                                     description="Zeyi approval API simulator (test only).")
    parser.add_argument("--host", default=env("ZEYI_SIM_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("SANDBOX_ZEYI_PORT", "8001")))
    parser.add_argument("--credentials", default=env("ZEYI_SIM_CREDENTIALS",
                                                     str(DEFAULT_CREDENTIALS_PATH)),
                        help="JSON with outbound and inbound credentials")
    parser.add_argument("--gateway-url", default=env("ZEYI_SIM_GATEWAY_URL"),
                        help="where callbacks go, e.g. http://127.0.0.1:8000")
    parser.add_argument("--encrypt-requests", action="store_true",
                        default=_flag(env("ZEYI_SIM_ENCRYPT_REQUESTS", "")),
                        help="expect AES-encrypted send/cancel bodies (gateway ZEYI_ENCRYPT)")
    parser.add_argument("--encrypt-callbacks", action="store_true",
                        default=_flag(env("ZEYI_SIM_ENCRYPT_CALLBACKS", "")),
                        help="encrypt callback bodies (gateway CALLBACK_ENCRYPTED)")
    parser.add_argument("--legacy-sign", action="store_true",
                        default=_flag(env("ZEYI_SIM_LEGACY_SIGN", "")),
                        help="sign token requests and callbacks without the body, as Zeyi SDK"
                             " 1.0.0 does (the gateway needs the inbound credential's"
                             " legacySign)")
    parser.add_argument("--ip-whitelist", default=env("ZEYI_SIM_IP_WHITELIST", ""),
                        help="comma-separated IPs or CIDRs allowed to call; empty allows all")
    parser.add_argument("--auto-decide", default=env("ZEYI_SIM_AUTO_DECIDE", "off"),
                        choices=AUTO_DECIDE_RULES,
                        help="decide every send automatically; by-suffix: -R refuse, -T terminate,"
                             " others agree")
    parser.add_argument("--auto-decide-delay", type=float,
                        default=float(env("ZEYI_SIM_AUTO_DECIDE_DELAY", "1.0")))
    parser.add_argument("--skew-seconds", type=int, default=300)
    parser.add_argument("--callback-max-tries", type=int, default=8)
    parser.add_argument("--callback-first-backoff", type=float, default=0.2)
    parser.add_argument("--callback-max-backoff", type=float, default=5.0)
    parser.add_argument("--cancel-callback-delay", type=float, default=0.5,
                        help="seconds between an accepted cancel and its terminate callback")
    parser.add_argument("--quiet", action="store_true",
                        help="print only the listening line and errors, not one line per send,"
                             " cancel, decision and callback try")
    parser.add_argument("--verbose", action="store_true",
                        default=_flag(env("ZEYI_SIM_VERBOSE", "")),
                        help="also print every HTTP request served (control API and inbox"
                             " page included)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    outbound, inbound = load_credentials(args.credentials)
    whitelist = tuple(part.strip() for part in args.ip_whitelist.split(",") if part.strip())
    return SimulatorConfig(
        outbound=outbound, inbound=inbound, host=args.host, port=args.port,
        gateway_url=args.gateway_url or None, encrypt_requests=args.encrypt_requests,
        encrypt_callbacks=args.encrypt_callbacks, legacy_sign=args.legacy_sign,
        ip_whitelist=whitelist,
        auto_decide=args.auto_decide, auto_decide_delay_seconds=args.auto_decide_delay,
        skew_seconds=args.skew_seconds, callback_max_tries=args.callback_max_tries,
        callback_first_backoff_seconds=args.callback_first_backoff,
        callback_max_backoff_seconds=args.callback_max_backoff,
        cancel_callback_delay_seconds=args.cancel_callback_delay, echo=not args.quiet,
        verbose=args.verbose)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    config = config_from_args(parse_args(argv))
    simulator = ZeyiSimulator(config)
    try:
        simulator.bind()
    except OSError as error:
        print(f"zeyi-simulator: cannot listen on {config.host}:{config.port}: {error}",
              file=sys.stderr)
        return 2

    def _terminate(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    say(f"[zeyi]    listening on {simulator.url} (inbox page {simulator.url}/, callbacks to"
        f" {config.gateway_url or 'nowhere'}, auto-decide {config.auto_decide})", sys.stdout)
    try:
        simulator.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop(timeout_seconds=2.0)
    return 0
