"""The approver's inbox: a web page at the simulator's root where a person agrees, refuses or
terminates approvals instead of calling the control API, and watches the callbacks and the
gateway's own view of each code.

The page (``inbox.html``: plain HTML and a little JS, no build step) reads the control API, and
the gateway's ``GET /audit/{code}`` through ``/_inbox/gateway/{code}`` here: the browser cannot
call the gateway itself, which is another origin and sends no CORS headers.
"""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

PAGE_PATH = Path(__file__).with_name("inbox.html")
QUIET_HEADER = "X-Sandbox-Quiet"
"""Sent with the page's polls, so the gateway's terminal shows requests people make, not one
line a second per code on screen (sandbox.gateway leaves such requests out)."""
GATEWAY_TIMEOUT_SECONDS = 5.0


def page() -> bytes:
    return PAGE_PATH.read_bytes()


def gateway_view(gateway_url: str | None, code: str) -> dict:
    """The gateway's answer to ``GET /audit/{code}``: ``{"httpStatus", "body"}``, or
    ``{"error"}`` when the gateway cannot be asked."""
    import requests

    if not gateway_url:
        return {"error": "the simulator was started without --gateway-url"}
    try:
        response = requests.get(f"{gateway_url.rstrip('/')}/audit/{quote(code, safe='')}",
                                headers={QUIET_HEADER: "inbox"},
                                timeout=GATEWAY_TIMEOUT_SECONDS)
    except requests.RequestException as error:
        return {"error": f"the gateway at {gateway_url} did not answer ({type(error).__name__})"}
    try:
        body = response.json()
    except ValueError:
        body = response.text[:2000]
    return {"httpStatus": response.status_code, "body": body}


def as_json(payload) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")
