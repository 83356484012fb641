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


class _Item:
    def __init__(self, name: str, spread: bool = False):
        self.name = name
        self._spread = spread

    def get_closest_marker(self, name: str):
        return pytest.mark.spread.mark if name == "spread" and self._spread else None


def test_the_spread_tests_start_each_workers_share_and_the_rest_keep_their_order():
    from tests.conftest import _spread

    # 4 model shards collected together among 396 other tests, as make test collects them.
    items = [_Item(f"t{i}") for i in range(200)] + [_Item(f"shard{k}", spread=True)
                                                    for k in range(4)] + [
        _Item(f"t{i}") for i in range(200, 396)]
    _spread(items)
    # worksteal gives 4 workers the contiguous quarters [0, 100), [100, 200), ...
    assert [i for i, item in enumerate(items) if item._spread] == [0, 100, 200, 300]
    assert [item.name for item in items if not item._spread] == [f"t{i}" for i in range(396)]
