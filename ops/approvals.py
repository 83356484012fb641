"""``python -m ops approvals show|list|resolve``: look at approvals, find the stuck ones, close one.

``show CODE``: one approval's status, attempts and callbacks.

Reads through the gateway's own store (``DynamoDBApprovalStore.history``), so it shows exactly what
``GET /audit/{code}`` answers. For people it renders tables; ``--json`` prints the record as is,
for scripts. Fields the table does not know (the record grows: a callback's disposition, an
operator's override...) are shown anyway, as extra columns or detail lines, never dropped.
"""
from __future__ import annotations

import json
import re
import time
import unicodedata
from datetime import UTC, datetime

from chalicelib.approvals.store import DynamoDBApprovalStore
from chalicelib.errors import GatewayError
from chalicelib.protocol.payloads import validate_code
from chalicelib.runtime import settings
from ops.common import NOTHING_TO_DO, OpsError, aws_session, client, error_code
from ops.stage_config import load_stage

# Known fields first, in this order; any other scalar field follows as its own column.
ATTEMPT_COLUMNS = ("attemptId", "status", "origin", "createdAt", "updatedAt", "leaseExpiresAt",
                   "supersededBy", "businessId")
CALLBACK_COLUMNS = ("receivedAt", "type", "result", "businessId", "disposition", "statusAfter",
                    "auditType", "auditUser", "remark")
HEAD_FIELDS = ("status", "currentAttemptId", "businessId", "updatedAt")
DETAIL_MAX_CHARS = 160
_EPOCH_MS_MIN = 10**12  # 2001-09-09 in milliseconds: smaller "...At" numbers are seconds


LIST_COLUMNS = ("code", "status", "openFor", "openSince", "attemptId", "leaseExpiresAt",
                "updatedAt")
OPEN_STATUSES = ("SUBMITTING", "CANCELLING", "PENDING")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _store(args):
    """(store, its stage, a function that reads through it with one-line errors)."""
    stage = load_stage(args.stage, args.config)
    session = aws_session(args.region)
    table = stage.setting(settings.APPROVALS_TABLE)
    store = DynamoDBApprovalStore(client(session, "dynamodb"), table,
                                  stage.setting(settings.NONCES_TABLE))

    def read(action):
        try:
            return action()
        except GatewayError as exc:
            raise OpsError(exc.message) from None
        except Exception as exc:
            if error_code(exc) == "ResourceNotFoundException":
                raise OpsError(f"table {table} does not exist in {session.region_name}: create "
                               f"it with `python -m ops.bootstrap --stage {stage.name}`") from None
            raise
    return store, stage, read


def show_command(args) -> int:
    code = validate_code(args.code)
    store, _, read = _store(args)
    history = read(lambda: store.history(code, bodies=True))
    if args.json:
        print(json.dumps(history, ensure_ascii=False, indent=2))
    else:
        print(render(history))
    return 0


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``2h``, ``7d``. Raises OpsError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise OpsError(f"a duration is a number and one of s, m, h, d (7d, 2h, 90m), got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _age(seconds: float) -> str:
    """A duration as people read it: 45s, 12m, 3h 05m, 8d 2h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def list_command(args, *, clock=time.time) -> int:
    """The open approvals (in one status, or in all three), oldest first: a Query per status on
    the open-approvals index, never a Scan."""
    store, _, read = _store(args)
    now = clock()
    before = None
    if args.older_than:
        before = int((now - parse_duration(args.older_than)) * 1000)
    statuses = [args.status] if args.status else list(OPEN_STATUSES)
    heads = []
    for status in statuses:
        heads += read(lambda status=status: store.open_approvals(
            status, opened_before_ms=before, limit=args.limit))
    heads.sort(key=lambda head: head.get("openSince") or 0)
    truncated = len(heads) > args.limit or (args.status and len(heads) == args.limit)
    heads = heads[:args.limit]
    if args.json:
        print(json.dumps(heads, ensure_ascii=False, indent=2))
        return 0
    older = f" open for more than {args.older_than}" if args.older_than else ""
    what = args.status or "open (" + ", ".join(OPEN_STATUSES) + ")"
    print(f"{len(heads)} {what} approval(s){older}, oldest first"
          + (f" (the first {args.limit}; --limit shows more)" if truncated else ""))
    rows = []
    for head in heads:
        row = {name: head.get(name) for name in LIST_COLUMNS if name in head}
        if isinstance(head.get("openSince"), (int, float)):
            row["openFor"] = _age(now - head["openSince"] / 1000)
        rows.append(row)
    print("\n".join(_table(rows, LIST_COLUMNS)))
    return 0


def resolve_command(args, *, ask=input, interactive=None) -> int:
    """An operator's override of an approval stuck open; who and why are kept in its history.
    Asks first (or takes --yes): closing an approval is not undone by the command."""
    code = validate_code(args.code)
    if not args.reason.strip():
        raise OpsError("--reason must say why: it is kept in the approval's history")
    store, _, read = _store(args)
    current = read(lambda: store.history(code))
    if not args.yes and current.get("status") in OPEN_STATUSES:  # else the store says why not
        import sys

        if not (sys.stdin.isatty() if interactive is None else interactive):
            raise OpsError(f"{code} is {current.get('status')}: closing it needs a yes; pass "
                           "--yes (stdin is not a terminal)")
        since = _cell("updatedAt", current.get("updatedAt"))
        answer = ask(f"{code} is {current.get('status')} (last change {since}); close it as "
                     f"{args.status}? Zeyi should have confirmed it. [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print(f"{code}: left {current.get('status')}")
            return NOTHING_TO_DO
    by = args.by or _caller(args)
    head = read(lambda: store.resolve(code, args.status, reason=args.reason.strip(), by=by))
    print(f"{code}: {head['resolution']['from']} → {head['status']} (by {by}); a decision Zeyi "
          "reports later still counts")
    return 0


def _caller(args) -> str:
    """Who is running this: the AWS identity the command's credentials belong to."""
    try:
        return client(aws_session(args.region), "sts").get_caller_identity()["Arn"]
    except Exception as exc:
        raise OpsError(f"cannot tell who you are ({error_code(exc) or type(exc).__name__}):"
                       " pass --by NAME") from None


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
    if isinstance(value, (int, float)) and name.endswith(("At", "Since")) and value > 0:
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
