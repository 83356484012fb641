"""tools/mutation.py itself: its ids name one piece of code, and a run refuses to start on an
equivalents file or a target list it could not honour. Fast: only the AST walk, no process."""
from __future__ import annotations

import textwrap

import pytest

from tools import mutation

GUARD = textwrap.dedent("""\
    LIMIT = 5


    def check(size):
        if size > 0:
            return size
        return 0
    """)
# The same module with a new guard written above the old one, in the same function.
GUARD_AND_NEW_GUARD = GUARD.replace("    if size > 0:", "    if size - LIMIT > 0:\n"
                                    "        raise ValueError('too big')\n    if size > 0:")


def _ids(source: str) -> list[str]:
    return [m.ident for m in mutation.mutants_of("protocol.signing", source)[1]]


def test_an_id_names_the_function_the_statement_and_the_change():
    ids = _ids(GUARD)
    assert "protocol.signing:<module>: `LIMIT = 5`: 5->6" in ids
    assert "protocol.signing:check: `if size > 0`: 0->1" in ids
    assert "protocol.signing:check: `if size > 0`: `size > 0` Gt->GtE" in ids
    assert "protocol.signing:check: `return 0`: 0->-1" in ids
    assert len(set(ids)) == len(ids)


def test_a_new_guard_gets_ids_of_its_own_and_the_old_ids_stay():
    before, after = _ids(GUARD), _ids(GUARD_AND_NEW_GUARD)
    assert set(before) <= set(after)
    new = set(after) - set(before)
    assert "protocol.signing:check: `if size - LIMIT > 0`: 0->1" in new
    assert "protocol.signing:check: `raise ValueError('too big')`: deleted" in new
    assert all("`if size - LIMIT > 0`" in ident or "`raise ValueError" in ident for ident in new)


def test_the_same_change_twice_in_one_statement_is_numbered_within_it():
    ids = _ids("PAIR = (0, 0)\nOTHER = 0\n")
    assert ids.count("protocol.signing:<module>: `PAIR = (0, 0)`: 0->1") == 1
    assert "protocol.signing:<module>: `PAIR = (0, 0)`: 0->1 #2" in ids
    assert "protocol.signing:<module>: `OTHER = 0`: 0->1" in ids


def test_a_regex_change_names_its_position():
    ids = _ids("import re\nR = re.compile(r'[A-Z]{2}[A-Z]{3}')\n")
    assert "protocol.signing:<module>: `R = re.compile('[A-Z]{2}[A-Z]{3}')`: regex drop A-Z at 1" \
        in ids
    assert "protocol.signing:<module>: `R = re.compile('[A-Z]{2}[A-Z]{3}')`: regex drop A-Z at 9" \
        in ids


def test_a_long_statement_is_shortened_with_a_digest_of_the_whole():
    long_a = "X = f(" + ", ".join(["1"] * 80) + ")\n"
    long_b = long_a.replace("1)", "2)")
    (first_a, *_), (first_b, *_) = _ids(long_a), _ids(long_b)
    assert first_a != first_b and len(first_a) < 200


def test_the_store_is_mutated_only_in_its_replay_guard():
    scopes = {m.ident.split(": ", 1)[0] for m in mutation.mutants_of("approvals.store.base")[1]}
    assert scopes == {"approvals.store.base:StoreBase._nonce_put",
                      "approvals.store.base:StoreBase._committed_already",
                      "approvals.store.base:StoreBase.use_nonce"}


@pytest.mark.parametrize(("line", "problem"), [
    ("protocol.signing:check: `if size > 0`: 0->1", "no reason given"),
    ("protocol.signing:check: `if size > 0`: 0->1 ::   ", "no reason given"),
    ("nowhere.module:check: `x`: 0->1 :: because", "no such module"),
])
def test_an_entry_without_a_reason_or_for_an_unknown_module_is_refused(tmp_path, line, problem):
    path = tmp_path / "equivalents.txt"
    path.write_text(f"# comment\n\n{line}\n", encoding="utf-8")
    with pytest.raises(mutation.SetupError, match=f"equivalents.txt line 3: {problem}"):
        mutation.load_equivalents(path)


def test_an_entry_listed_twice_is_refused(tmp_path):
    path = tmp_path / "equivalents.txt"
    entry = "protocol.signing:check: `if size > 0`: 0->1 :: because"
    path.write_text(f"{entry}\n{entry} again\n", encoding="utf-8")
    with pytest.raises(mutation.SetupError, match="line 2: listed twice"):
        mutation.load_equivalents(path)


def test_every_entry_of_the_equivalents_file_names_a_mutant_of_today(capsys):
    entries = mutation.load_equivalents()
    known = {m.ident for module in mutation.TARGETS for m in mutation.mutants_of(module)[1]}
    assert sorted(set(entries) - known) == []


def test_a_missing_target_file_fails_the_run_before_any_mutant(monkeypatch, capsys):
    assert mutation.missing_test_files(list(mutation.TARGETS)) == []
    monkeypatch.setitem(mutation.TARGETS, "protocol.signing",
                        ["tests/test_protocol.py", "tests/test_no_such_file.py"])
    assert mutation.main(["protocol.tokens"]) == 2
    assert "protocol.signing: tests/test_no_such_file.py" in capsys.readouterr().err


@pytest.mark.parametrize(("status", "cause"), [
    (1, "a test failed"), (2, "import or collection error"), (5, "no tests ran"),
    (None, "timeout"), (-9, "crashed (signal 9)"), (99, "crashed (exit 99)"),
])
def test_each_kill_is_told_by_its_cause(status, cause):
    assert mutation.kill_cause(status) == cause


def test_the_summary_counts_kills_by_cause_failing_tests_first():
    line = mutation.summary("protocol.tokens", {"timeout": 2, "a test failed": 40,
                                                "import or collection error": 1}, 3, 12.4)
    assert line == ("protocol.tokens: 46 mutants, 43 killed (40 a test failed, 1 import or"
                    " collection error, 2 timeout), 3 survived, baseline 12 s")
