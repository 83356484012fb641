"""``python -m ops files revoke CODE``: end every file link of an approval at once (a leaked link).

Every link of the code issued until now answers 410 from the next click on; the files themselves
stay in S3 (the lifecycle rule removes them). A later send of the code gets new links that work.
"""
from __future__ import annotations

from datetime import UTC, datetime

from chalicelib.protocol.payloads import validate_code
from ops.approvals import _store


def revoke_command(args) -> int:
    code = validate_code(args.code)
    store, stage, read = _store(args)
    head = read(lambda: store.get_head(code))
    revoked_at = read(lambda: store.revoke_files(code))
    when = datetime.fromtimestamp(revoked_at / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    print(f"{stage.name}: every file link of code {code} issued until {when} is revoked: a"
          " click answers 410 from now on")
    if head is None:
        print(f"note: code {code} has no approval in {stage.name} (revoked anyway)")
    return 0
