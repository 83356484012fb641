"""``python -m ops approvals show``: what the gateway recorded for a code, as an operator reads it
in a terminal, and as JSON for scripts; against moto server, with the approval made by the
gateway itself (a send through the Zeyi simulator, then Zeyi's callbacks)."""
from __future__ import annotations

import io
import json
import re

import pytest

from chalicelib.approvals.store import DynamoDBApprovalStore
from chalicelib.runtime import aws
from tests import peer
from tests.conftest import APPROVALS_TABLE, NONCES_TABLE, simulator
from tests.test_ops_cli import run_ops, stage_config

ISO_MS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def approval(gateway, monkeypatch):
    """HT-OPS-1: sent once (Zeyi refused: FAILED), sent again (PENDING), then Zeyi's agree
    callback, delivered twice (recorded once)."""
    with simulator() as zeyi:
        monkeypatch.setenv("ZEYI_BASE_URL", zeyi.url)
        zeyi.add_fault("send", "refuse")
        gateway.lambda_.invoke("send_approval", peer.send_body("HT-OPS-1"))
        assert gateway.lambda_.invoke("send_approval", peer.send_body("HT-OPS-1")).payload[
            "success"]
    body = b"{}"
    token = json.loads(gateway.http.post("/auth/token", body=body, headers=peer.signed_headers(
        body)).body)["result"]["accessToken"]
    callback = peer.callback_body(code="HT-OPS-1", businessId="proc-77", remark="同意 <ok>")
    for _ in range(2):
        response = gateway.http.post("/dingtalkAudit/callback", body=callback,
                                     headers=peer.signed_headers(callback, token=token))
        assert response.status_code == 200
    return "HT-OPS-1"


def store() -> DynamoDBApprovalStore:
    return DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)


def test_show_renders_status_attempts_and_callbacks_as_tables(approval, capsys, tmp_path):
    status, out, err = run_ops(capsys, "approvals", "show", approval, "--stage", "dev",
                               "--config", stage_config(tmp_path))
    assert status == 0 and err == ""
    history = store().history(approval)
    lines = out.splitlines()
    assert lines[0] == "HT-OPS-1  AGREED"
    assert re.fullmatch(rf"  current attempt id\s+{history['currentAttemptId']}", lines[1])
    assert re.fullmatch(r"  business id\s+proc-77", lines[2])
    assert re.fullmatch(rf"  updated at\s+{ISO_MS}", lines[3])

    attempts = out.split("attempts (2, newest first; * current)\n")[1].split("\n\n")[0]
    header, *rows = attempts.splitlines()
    # Each send's correlation id (the Lambda invocations made them) is a column of its own.
    assert header.split() == ["ATTEMPT", "ID", "STATUS", "ORIGIN", "CREATED", "AT", "UPDATED",
                              "AT", "SUPERSEDED", "BY", "BUSINESS", "ID", "CORRELATION", "ID"]
    table_rows = [row for row in rows if not row.startswith("      ")]
    current, first = history["attempts"]
    assert table_rows[0].split()[:3] == [current["attemptId"] + "*", "AGREED", "send"]
    assert table_rows[1].split()[:3] == [first["attemptId"], "FAILED", "send"]
    assert table_rows[1].split()[-3] == current["attemptId"]  # superseded by the resend
    assert table_rows[1].split()[-1] == first["correlationId"]
    assert re.search(rf"{ISO_MS}\s+{ISO_MS}", table_rows[0])
    # The request and Zeyi's answer are nested: one detail line each, under their attempt.
    details = [row.strip() for row in rows if row.startswith("      ")]
    assert any(d.startswith('request: {"code":"HT-OPS-1"') for d in details)
    assert any(d.startswith('outcome: {"kind":"rejected"') for d in details)

    callbacks = out.split("callbacks (1, newest first)\n")[1]
    header, *rows = callbacks.splitlines()
    assert header.split()[:4] == ["RECEIVED", "AT", "TYPE", "RESULT"]
    table_rows = [row for row in rows if not row.startswith("      ")]
    assert len(table_rows) == 1  # the redelivery is no second callback
    assert "finish  agree   proc-77" in table_rows[0]
    assert "同意 <ok>" in table_rows[0]
    assert any(row.strip().startswith('body: {"code":"HT-OPS-1"') for row in rows)


def test_show_json_is_the_record_for_scripts(approval, capsys, tmp_path):
    status, out, _ = run_ops(capsys, "approvals", "show", approval, "--json", "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 0
    assert json.loads(out) == store().history(approval, bodies=True)


def test_fields_the_renderer_does_not_know_are_shown_not_dropped(approval, capsys, tmp_path):
    """The record grows (a callback's disposition, an operator's override): the table shows
    every field it gets, short ones as columns, nested ones as detail lines."""
    dynamodb = aws.client("dynamodb")
    items = dynamodb.query(TableName=APPROVALS_TABLE, KeyConditionExpression="code = :c",
                           ExpressionAttributeValues={":c": {"S": approval}})["Items"]
    callback = next(i for i in items if i["sk"]["S"].startswith("CALLBACK#"))
    dynamodb.update_item(
        TableName=APPROVALS_TABLE, Key={"code": callback["code"], "sk": callback["sk"]},
        UpdateExpression="SET handledBy = :who, overrideNote = :note",
        ExpressionAttributeValues={":who": {"S": "ops-oncall"},
                                   ":note": {"M": {"reason": {"S": "stuck"}}}})
    status, out, _ = run_ops(capsys, "approvals", "show", approval, "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 0
    callbacks = out.split("callbacks (1, newest first)\n")[1]
    assert "HANDLED BY" in callbacks.splitlines()[0]
    assert "ops-oncall" in callbacks
    assert '      overrideNote: {"reason":"stuck"}' in callbacks.splitlines()


def test_a_code_never_seen_is_one_line(aws_env, capsys, tmp_path):
    status, out, err = run_ops(capsys, "approvals", "show", "NEVER-SENT", "--stage", "dev",
                               "--config", stage_config(tmp_path))
    assert (status, out) == (1, "")
    assert err == "error: no approval was ever sent or called back for code NEVER-SENT\n"


def test_a_malformed_code_is_refused_before_any_call(capsys, tmp_path):
    status, _, err = run_ops(capsys, "approvals", "show", "X" * 200, "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 1 and err.startswith("error: code must be")


def test_a_missing_table_names_the_table_and_the_fix(moto_server, monkeypatch, capsys, tmp_path):
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    status, _, err = run_ops(capsys, "approvals", "show", "HT-1", "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 1
    assert err == (f"error: table {APPROVALS_TABLE} does not exist in us-east-1: create it "
                   "with `python -m ops.bootstrap --stage dev`\n")



# -- list: the stuck ones, from the open-approvals index -------------------------------------------

def test_list_finds_the_oldest_open_approvals_of_a_status(aws_env, capsys, tmp_path):
    now = [1_800_000_000.0]
    store_ = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE,
                                   clock=lambda: now[0])
    for code, age_days in (("OLD-2", 8), ("OLD-1", 9), ("NEW-1", 1)):
        now[0] = 1_800_000_000.0 - age_days * 86400
        attempt = store_.claim(code, {"code": code}, 120)
        store_.settle_send(code, attempt, "PENDING", {"kind": "accepted"})
    store_.claim("SUB-1", {"code": "SUB-1"}, 120)  # SUBMITTING: another status

    import ops.approvals

    args = ["approvals", "list", "--status", "PENDING", "--older-than", "7d", "--stage", "dev",
            "--config", stage_config(tmp_path)]
    original = ops.approvals.list_command
    ops.approvals.list_command = lambda a: original(a, clock=lambda: 1_800_000_000.0)
    try:
        status, out, err = run_ops(capsys, *args)
        json_status, json_out, _ = run_ops(capsys, *args, "--json")
    finally:
        ops.approvals.list_command = original
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "2 PENDING approval(s) open for more than 7d, oldest first"
    assert [line.split()[0] for line in lines[2:]] == ["OLD-1", "OLD-2"]
    assert [head["code"] for head in json.loads(json_out)] == ["OLD-1", "OLD-2"]


def test_list_shows_every_open_approval_in_one_run_with_human_times(aws_env, capsys,
                                                                   tmp_path, monkeypatch):
    """Without --status: SUBMITTING, CANCELLING and PENDING in one table, oldest first, each
    with how long it has been open and when it opened (not epoch milliseconds)."""
    import ops.approvals

    now = [1_800_000_000.0]
    store_ = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE,
                                   clock=lambda: now[0])
    now[0] -= 3 * 86400 + 2 * 3600
    pending = store_.claim("P-1", {"code": "P-1"}, 120)
    store_.settle_send("P-1", pending, "PENDING", {"kind": "accepted"})
    now[0] = 1_800_000_000.0 - 45 * 60
    store_.claim("S-1", {"code": "S-1"}, 120)
    original = ops.approvals.list_command
    monkeypatch.setattr(ops.approvals, "list_command",
                        lambda a: original(a, clock=lambda: 1_800_000_000.0))
    status, out, _ = run_ops(capsys, "approvals", "list", "--stage", "dev",
                             "--config", stage_config(tmp_path))
    lines = out.splitlines()
    assert status == 0
    assert lines[0] == ("2 open (SUBMITTING, CANCELLING, PENDING) approval(s), oldest first")
    assert lines[1].split()[:5] == ["CODE", "STATUS", "OPEN", "FOR", "OPEN"]
    assert lines[2].split()[:5] == ["P-1", "PENDING", "3d", "2h", "2027-01-12"]
    assert lines[3].split()[:4] == ["S-1", "SUBMITTING", "45m", "2027-01-15"]
    assert not re.search(r"(?<![\w-])\d{13}(?![\w-])", out)  # no bare epoch milliseconds


def test_show_keeps_columns_aligned_with_chinese_text():
    """A CJK character takes two terminal columns: the next column starts at the same place in
    every row."""
    from ops.approvals import _width, render

    history = {"code": "HT-1", "status": "AGREED", "attempts": [], "callbacks": [
        {"receivedAt": 1_800_000_000_000, "type": "finish", "result": "agree",
         "auditUser": "张三", "remark": "同意"},
        {"receivedAt": 1_800_000_000_001, "type": "finish", "result": "agree",
         "auditUser": "li", "remark": "ok"}]}
    rows = [line for line in render(history).splitlines() if "finish" in line]
    starts = [_width(row[:row.index("同意" if "同意" in row else "ok")]) for row in rows]
    assert len(rows) == 2 and starts[0] == starts[1]


def test_list_refuses_a_duration_it_cannot_read(aws_env, capsys, tmp_path):
    status, _, err = run_ops(capsys, "approvals", "list", "--status", "PENDING", "--older-than",
                             "a week", "--stage", "dev", "--config", stage_config(tmp_path))
    assert status == 1 and err.startswith("error: a duration is a number and one of s, m, h, d")


# -- resolve: an operator's override, kept with who and why -----------------------------------------

def test_resolve_closes_a_stuck_approval_and_keeps_who_and_why(aws_env, capsys, tmp_path):
    store_ = store()
    store_.claim("STUCK-1", {"code": "STUCK-1"}, 120)
    status, out, err = run_ops(capsys, "approvals", "resolve", "STUCK-1", "--status", "FAILED",
                               "--reason", "Zeyi support: never received", "--yes",
                               "--stage", "dev", "--config", stage_config(tmp_path))
    assert (status, err) == (0, "")
    assert out.startswith("STUCK-1: SUBMITTING → FAILED (by arn:aws:sts::")
    record = store_.history("STUCK-1")
    assert record["status"] == "FAILED"
    resolution = record["attempts"][0]["resolution"]
    assert resolution["reason"] == "Zeyi support: never received"
    assert resolution["by"].startswith("arn:aws:sts::") and resolution["from"] == "SUBMITTING"
    assert store_.open_approvals("SUBMITTING") == []  # it left the open-approvals index

    again = run_ops(capsys, "approvals", "resolve", "STUCK-1", "--status", "TERMINATED",
                    "--reason", "x", "--by", "me", "--yes", "--stage", "dev",
                    "--config", stage_config(tmp_path))
    assert again[0] == 1 and again[2] == (
        "error: code STUCK-1 is FAILED: only an open approval (SUBMITTING, PENDING, CANCELLING)"
        " can be resolved\n")


def test_resolve_asks_before_closing_and_a_no_changes_nothing(aws_env, capsys, tmp_path,
                                                               monkeypatch):
    from ops import approvals as approvals_module

    store_ = store()
    attempt = store_.claim("WAIT-1", {"code": "WAIT-1"}, 120)
    store_.settle_send("WAIT-1", attempt, "PENDING", {"kind": "accepted"})
    argv = ["approvals", "resolve", "WAIT-1", "--status", "TERMINATED", "--reason", "gone",
            "--by", "me", "--stage", "dev", "--config", stage_config(tmp_path)]
    # Not a terminal (a script, a pipe), no --yes: refused, nothing closed.
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    status, _, err = run_ops(capsys, *argv)
    assert status == 1 and err == ("error: WAIT-1 is PENDING: closing it needs a yes; pass "
                                   "--yes (stdin is not a terminal)\n")
    assert store_.history("WAIT-1")["status"] == "PENDING"
    # At a terminal: the question names the status; anything but yes leaves it open.
    asked = []
    real = approvals_module.resolve_command
    monkeypatch.setattr(approvals_module, "resolve_command", lambda args: real(
        args, ask=lambda q: asked.append(q) or "n", interactive=True))
    status, out, _ = run_ops(capsys, *argv)
    assert (status, out) == (3, "WAIT-1: left PENDING\n")
    assert asked[0].startswith("WAIT-1 is PENDING (last change 20")
    assert asked[0].endswith("close it as TERMINATED? Zeyi should have confirmed it. [y/N] ")
    assert store_.history("WAIT-1")["status"] == "PENDING"
    monkeypatch.setattr(approvals_module, "resolve_command", lambda args: real(
        args, ask=lambda q: "yes", interactive=True))
    status, out, _ = run_ops(capsys, *argv)
    assert status == 0 and out.startswith("WAIT-1: PENDING → TERMINATED (by me)")


def test_resolve_needs_a_reason(aws_env, capsys, tmp_path):
    status, _, err = run_ops(capsys, "approvals", "resolve", "X-1", "--status", "FAILED",
                             "--reason", " ", "--by", "me", "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 1 and "--reason must say why" in err
