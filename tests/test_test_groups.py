"""make check runs the tests marked by no ``process`` mark; the mark is put on by itself on the
tests that start one through a fixture (tests/conftest.py), so a new test lands in its group."""
from __future__ import annotations

import subprocess

import pytest


def test_a_test_on_moto_server_is_marked_as_starting_a_process(request, store):
    assert request.node.get_closest_marker("process") is not None


def test_a_test_starting_nothing_is_left_in_make_check(request):
    assert request.node.get_closest_marker("process") is None


def test_in_make_check_an_unmarked_test_starting_a_process_fails_saying_how_to_mark_it(request):
    if "not process" not in (request.config.option.markexpr or ""):
        # Outside make check, processes are allowed everywhere: this test starts one.
        assert subprocess.run(["true"], check=False).returncode == 0
        return
    with pytest.raises(AssertionError, match="is not marked `process`; mark it"):
        subprocess.run(["true"], check=False)
