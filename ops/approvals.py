"""``python -m ops approvals show CODE``: one approval's status, attempts and callbacks.

Reads through the gateway's own store (``DynamoDBApprovalStore.history``), so it shows exactly what
``GET /audit/{code}`` answers. For people it renders tables; ``--json`` prints the record as is,
for scripts. Fields the table does not know (the record grows: a callback's disposition, an
operator's override...) are shown anyway, as extra columns or detail lines, never dropped.
"""
from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, datetime

from chalicelib import settings
from chalicelib.approval_store import DynamoDBApprovalStore
from chalicelib.payloads import validate_code
from ops.common import OpsError, aws_session, client, error_code
from ops.stage_config import load_stage

# Known fields first, in this order; any other scalar field follows as its own column.
ATTEMPT_COLUMNS = ("attemptId", "status", "origin", "createdAt", "updatedAt", "leaseExpiresAt",
                   "supersededBy", "businessId")
CALLBACK_COLUMNS = ("receivedAt", "type", "result", "businessId", "disposition", "statusAfter",
                    "auditType", "auditUser", "remark")
HEAD_FIELDS = ("status", "currentAttemptId", "businessId", "updatedAt")
DETAIL_MAX_CHARS = 160
_EPOCH_MS_MIN = 10**12  # 2001-09-09 in milliseconds: smaller "...At" numbers are seconds


def show_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    code = validate_code(args.code)
    session = aws_session(args.region)
    table = stage.setting(settings.APPROVALS_TABLE)
    store = DynamoDBApprovalStore(client(session, "dynamodb"), table,
                                  stage.setting(settings.NONCES_TABLE))
    try:
        history = store.history(code, bodies=True)
    except Exception as exc:
        if error_code(exc) == "ResourceNotFoundException":
            raise OpsError(f"table {table} does not exist in {session.region_name}: create it "
                           f"with `python -m ops.bootstrap --stage {stage.name}`") from None
        raise
    if args.json:
        print(json.dumps(history, ensure_ascii=False, indent=2))
    else:
        print(render(history))
    return 0


def render(history: dict) -> str:
    """The history as aligned text: a head, then one table of attempts and one of callbacks,
    newest first; nested or long values on indented lines under their row."""
    lines = [f"{history.get('code')}  {history.get('status')}"]
    head = [name for name in HEAD_FIELDS if name != "status"]
    head += sorted(k for k in history if k not in {*HEAD_FIELDS, "code", "attempts", "callbacks"})
    width = max(len(_label(name)) for name in head)
    for name in head:
        lines.append(f"  {_label(name).ljust(width)}  {_cell(name, history.get(name))}")
    current = history.get("currentAttemptId")
    attempts = history.get("attempts") or []
    lines += ["", f"attempts ({len(attempts)}, newest first; * current)"]
    lines += _table(attempts, ATTEMPT_COLUMNS, mark=lambda row: row.get("attemptId") == current)
    callbacks = history.get("callbacks") or []
    lines += ["", f"callbacks ({len(callbacks)}, newest first)"]
    lines += _table(callbacks, CALLBACK_COLUMNS)
    return "\n".join(lines)


def _label(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r" \1", name).lower()


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _cell(name: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and name.endswith("At") and value > 0:
        seconds = value / 1000 if value >= _EPOCH_MS_MIN else value
        moment = datetime.fromtimestamp(seconds, UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"
    if isinstance(value, str):
        return " ".join(value.split()) or '""'
    if _is_scalar(value):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _width(text: str) -> int:
    """Columns the text takes in a terminal: CJK characters (names, remarks) take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def _table(rows: list[dict], known: tuple[str, ...], mark=None) -> list[str]:
    if not rows:
        return ["  (none)"]
    columns = [name for name in known if any(name in row for row in rows)]
    # An unknown field is a column when it is short and flat in every row, else a detail line.
    others = {name for row in rows for name in row if name not in known}
    columns += sorted(name for name in others
                      if all(_is_scalar(row[name]) and len(_cell(name, row[name]))
                             <= DETAIL_MAX_CHARS // 4 for row in rows if name in row))
    cells = [[_cell(name, row.get(name)) + ("*" if i == 0 and mark and mark(row) else "")
              for i, name in enumerate(columns)] for row in rows]
    widths = [max(_width(_label(name)), *(_width(line[i]) for line in cells))
              for i, name in enumerate(columns)]
    out = ["  " + "  ".join(_pad(_label(name).upper(), w)
                            for name, w in zip(columns, widths, strict=True)).rstrip()]
    for row, line in zip(rows, cells, strict=True):
        out.append("  " + "  ".join(_pad(c, w) for c, w in zip(line, widths, strict=True)).rstrip())
        for name in sorted(k for k in row if k not in columns):
            text = _cell(name, row[name])
            if len(text) > DETAIL_MAX_CHARS:
                text = (text[:DETAIL_MAX_CHARS] + f"… ({len(text) - DETAIL_MAX_CHARS} more "
                        "characters; --json shows all)")
            out.append(f"      {name}: {text}")
    return out
