"""``python -m ops``: help on every command, and the same one-line errors from every command when
credentials or the region are missing. Also the helpers the other test_ops_* files share: a copy
of .chalice/config.json whose dev stage names conftest's tables and secrets."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Imported at collection, not first inside a test: the gateway's logger keeps the sys.stdout it
# found at import, and a test's capsys stream is closed once that test ends.
import app  # noqa: F401
from chalicelib.runtime import settings
from ops.cli import build_parser, main
from ops.common import chalice_build_lock
from ops.stage_config import CONFIG_PATH
from tests import conftest

ROOT = Path(__file__).resolve().parent.parent


def stage_config(tmp_path: Path, stage: str = "dev", **changes) -> Path:
    """A copy of the repository's config whose ``stage`` uses conftest's table and secret names
    (so the gateway under test and the command share them); ``changes`` update the stage's
    environment, except ``stage_settings`` (a dict merged into the stage itself)."""
    config = json.loads(CONFIG_PATH.read_text(encoding="utf-8"))
    stage_cfg = config["stages"][stage]
    stage_cfg["environment_variables"].update({
        settings.APPROVALS_TABLE: conftest.APPROVALS_TABLE,
        settings.NONCES_TABLE: conftest.NONCES_TABLE,
        settings.OUTBOUND_SECRET_ID: conftest.OUTBOUND_SECRET_ID,
        settings.INBOUND_SECRET_ID: conftest.INBOUND_SECRET_ID,
        settings.TOKEN_SECRET_ID: conftest.TOKEN_SECRET_ID,
    })
    stage_cfg.update(changes.pop("stage_settings", {}))
    stage_cfg["environment_variables"].update(changes)
    directory = tmp_path / "project" / ".chalice"
    directory.mkdir(parents=True, exist_ok=True)
    for policy in CONFIG_PATH.parent.glob("policy-*.json"):
        (directory / policy.name).write_text(policy.read_text(encoding="utf-8"),
                                             encoding="utf-8")
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def run_ops(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()  # what ran before (the gateway's metric lines) is not the command's
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


# Every command with the arguments it needs: each must fail the same way without AWS access.
COMMANDS = [
    ["approvals", "show", "HT-1"],
    ["approvals", "list", "--status", "PENDING", "--older-than", "7d"],
    ["approvals", "resolve", "HT-1", "--status", "FAILED", "--reason", "stuck", "--by", "me"],
    ["files", "revoke", "HT-1"],
    ["secrets", "add-inbound"],
    ["secrets", "list-inbound"],
    ["secrets", "retire-inbound", "some-key"],
    ["secrets", "last-seen", "some-key"],
    ["secrets", "rotate-token-key"],
    ["sign", "check", "--headers", "{headers}", "--body", "{body}"],
    ["config", "check"],
    ["config", "fill-vpc"],
    ["config", "fill-stream"],
    ["events", "replay-dlq"],
    ["events", "replay", "--since", "2026-01-01T00:00:00Z", "--until", "2026-01-02T00:00:00Z",
     "--rule", "finance-app"],
    ["events", "configure-mapping"],
    ["deploy", "--dry-run"],
]


def _command_paths(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _command_paths(sub, (*prefix, name))


def test_every_command_has_help(capsys):
    paths = list(_command_paths(build_parser()))
    # Bootstrap and packaging are listed too (their own modules parse their arguments).
    assert {path[0] for path in paths} == {"approvals", "secrets", "sign", "config", "deploy",
                                          "events", "files", "bootstrap", "package"}
    leaves = {path for path in paths if not any(p[:len(path)] == path and p != path
                                                for p in paths)}
    assert leaves == {tuple(c[:2]) if c[0] != "deploy" else ("deploy",) for c in COMMANDS} | {
        ("bootstrap",), ("package",)}
    for path in [(), *paths]:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: python -m ops"), path


def test_the_top_level_help_names_bootstrap_packaging_and_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "bootstrap" in out and "package" in out
    for line in ("0  done", "3  nothing to do", "4  a next step is not due yet"):
        assert line in out
    assert main(["bootstrap", "--stage", "nope"]) == 2  # ops.bootstrap's own parser ran
    assert "stage 'nope' is not in" in capsys.readouterr().err


def _argv(command, tmp_path) -> list[str]:
    headers, body = tmp_path / "headers.json", tmp_path / "body.json"
    headers.write_text("{}", encoding="utf-8")
    body.write_text("{}", encoding="utf-8")
    return [part.format(headers=headers, body=body) for part in command]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("missing, message", [
    (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "no AWS credentials found: set AWS_PROFILE"),
    (("AWS_DEFAULT_REGION", "AWS_REGION"), "no AWS region: set AWS_REGION"),
], ids=["credentials", "region"])
def test_every_command_says_what_is_missing_in_one_line(command, missing, message, monkeypatch,
                                                       capsys, tmp_path):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in missing:
        monkeypatch.delenv(name, raising=False)
    config = stage_config(tmp_path, stage_settings={"subnet_ids": ["subnet-0123456789abcdef0"],
                                                    "security_group_ids": ["sg-0123456789abcdef0"]})
    status, out, err = run_ops(capsys, *_argv(command, tmp_path), "--stage", "dev",
                               "--config", config)
    assert status == 1
    if command[:2] == ["config", "check"]:
        # config check lists it with the problems it found without AWS.
        assert f"  - AWS not checked: {message}" in out and err == ""
    else:
        assert err.startswith(f"error: {message}") or message in err, err
        assert err.count("\n") == 1, err


@pytest.mark.process
def test_the_module_entry_point_runs_as_documented(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    completed = subprocess.run(
        [sys.executable, "-m", "ops", "approvals", "show", "HT-1", "--stage", "dev",
         "--region", "cn-north-1"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=False)
    assert completed.returncode == 1
    assert completed.stderr.startswith("error: no AWS credentials found")
    assert completed.stderr.count("\n") == 1 and completed.stdout == ""


def test_an_unknown_stage_is_one_line(capsys):
    status, _, err = run_ops(capsys, "config", "check", "--stage", "nope")
    assert status == 1 and err.startswith("error: stage 'nope' is not in ")


def test_output_cut_short_by_the_reader_is_not_an_error(capsys):
    """`python -m ops approvals show CODE --json | head`: the reader leaves early; the command
    ends quietly instead of `error: file: Broken pipe`."""
    import os
    import sys

    from ops.common import run

    read_end, write_end = os.pipe()
    os.close(read_end)
    pipe = os.fdopen(write_end, "w")
    saved = sys.stdout
    sys.stdout = pipe
    try:
        status = run(lambda: [print("x" * 1024, flush=True) for _ in range(256)] and 0)
    finally:
        sys.stdout = saved
        pipe.close()
    assert status == 0
    assert capsys.readouterr().err == ""


@pytest.mark.process
def test_two_chalice_builds_of_one_project_take_turns(tmp_path):
    # chalice writes its cached zips in place and trusts any it finds: a second build waits for
    # the first (ops.package, ops deploy) instead of shipping a half-written zip.
    other = [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'w'); "
             "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)",
             str(tmp_path / ".chalice" / "deployments" / ".build.lock")]
    with chalice_build_lock(tmp_path):
        held = subprocess.run(other, capture_output=True, text=True, check=False)
    free = subprocess.run(other, capture_output=True, text=True, check=False)
    assert held.returncode != 0 and "BlockingIOError" in held.stderr
    assert free.returncode == 0, free.stderr
