"""A stand-in for Zeyi (则一): the two APIs Jinrun calls, the callbacks Zeyi makes to Jinrun,
and an approver's inbox page.

Internal teams develop against it and the gateway's end-to-end tests use it as the fake Zeyi, so
it behaves like the partner's side of docs/protocol.md, checked with its own code
(``sandbox.zeyi_protocol``, never ``chalicelib``). One module per concern:

- ``rules``: Zeyi's paths, envelope, body checks, states; ``model``: approvals, callbacks, faults.
- ``simulator``: the state and behaviour (send, cancel, decisions, faults, queries).
- ``callbacks``: token, signed callback, retries with bounded backoff on background threads.
- ``server``: HTTP (Zeyi's paths with faults, the control API, the page); ``control``: the
  control API; ``inbox`` + ``inbox.html``: the approver's page.
- ``cli``: ``python -m sandbox.zeyi --port 8001 --gateway-url http://127.0.0.1:8000``.
"""
from sandbox.zeyi.config import DEFAULT_CREDENTIALS_PATH, SimulatorConfig, load_credentials
from sandbox.zeyi.simulator import ZeyiSimulator

__all__ = ["DEFAULT_CREDENTIALS_PATH", "SimulatorConfig", "ZeyiSimulator", "load_credentials"]
