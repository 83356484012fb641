"""docs/operations.md, walked on paper: every operator command in it parses as written, every
shell variable a command uses was set by an earlier step, and every command of the CLI is
documented. (The AWS side of each command is tested against moto server in test_ops_*.)"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ops import bootstrap, package
from ops.cli import build_parser
from tests.test_ops_cli import COMMANDS

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
# Set by the shell or by the prerequisites' `export` line.
GIVEN = {"PWD", "HOME"}
# Longest prefix first: `python -m ops bootstrap ...` is parsed by ops.bootstrap's own parser.
PARSERS = {
    ".venv/bin/python -m ops bootstrap ": bootstrap._parser,
    ".venv/bin/python -m ops package ": package._parser,
    ".venv/bin/python -m ops ": build_parser,
    ".venv/bin/python -m ops.bootstrap ": bootstrap._parser,
    ".venv/bin/python -m ops.package ": package._parser,
}


def shell_commands() -> list[str]:
    """Each command of the ```sh blocks, in document order, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _without_comment(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def operator_commands() -> list[tuple[str, list[str]]]:
    found = []
    for command in shell_commands():
        for prefix in PARSERS:
            if command.startswith(prefix):
                found.append((prefix, _without_comment(command[len(prefix):])))
                break
    return found


def test_the_document_has_operator_commands():
    assert len(operator_commands()) >= 15


@pytest.mark.parametrize("prefix, argv", operator_commands(), ids=lambda v: " ".join(v)
                         if isinstance(v, list) else v.split()[-1])
def test_every_documented_command_parses_as_written(prefix, argv):
    argv = [re.sub(r"\$\{?(\w+)\}?", "value", arg) for arg in argv]
    try:
        PARSERS[prefix]().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`{prefix}{' '.join(argv)}` does not parse (exit {exc.code})")


def test_every_variable_is_set_before_it_is_used():
    assigned = set(GIVEN)
    for command in shell_commands():
        used = set(re.findall(r"\$\{?(\w+)\}?", re.sub(r"'[^']*'", "", command)))
        missing = used - assigned
        assert not missing, f"`{command}` uses {missing} before any step sets it"
        assigned |= set(re.findall(r"(?:^|\s|;|\()(\w+)=", command))


def test_every_cli_command_is_documented():
    text = DOC.read_text(encoding="utf-8")
    for command in COMMANDS:
        words = command[:2] if command[0] != "deploy" else ["deploy"]
        assert f"-m ops {' '.join(words)}" in text, f"{' '.join(words)} is not in {DOC.name}"
    assert "-m ops bootstrap" in text and "make package" in text and "-m ops package" in text


def test_the_first_deploy_is_one_checklist_for_one_stage_variable():
    """Every operator command of the checklist names the stage through ${STAGE}, set once in
    section 0: no step hard-codes dev (or prod) where a prod deploy could pick up dev."""
    text = DOC.read_text(encoding="utf-8")
    checklist = text[text.index("## 1. First deploy"):text.index("## 2. ")]
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", checklist, re.S))
    stages = re.findall(r'--stage\s+("[^"]*"|[^\s)]+)', blocks)
    assert stages and set(stages) == {'"${STAGE}"'}, stages
    assert "export AWS_PROFILE=jinrun-prod STAGE=prod" in text[:text.index("## 1. ")]
    # The packaged stack takes its stage from the package, never from an override.
    assert "parameter-overrides Stage" not in checklist.split("### The CloudFormation path")[1]


def test_what_a_rehearsal_cannot_prove_is_listed():
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### What a rehearsal cannot prove"):]
    for limit in ("ImportRestApi", "Fn::Select", "Logs Insights", "resource `*`"):
        assert limit in section, limit


def test_the_sandboxs_operator_command_works_pasted_alone():
    """docs/sandbox.md's replay-dlq line names the emulator, its region and its credentials:
    pasted into a fresh shell it needs nothing else (before, it failed on the region, then on
    the credentials)."""
    sandbox = (DOC.parent / "sandbox.md").read_text(encoding="utf-8")
    blocks = [block for block in re.findall(r"```sh\n(.*?)```", sandbox, re.S)
              if "-m ops events" in block]
    assert blocks
    for block in blocks:  # each block pasted alone: the settings inline or exported first
        for needed in ("AWS_ENDPOINT_URL=http://127.0.0.1:5000", "REGION=",
                       "AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="):
            assert needed in block.split("-m ops events")[0], (needed, block)
