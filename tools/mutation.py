"""Mutation testing of the validation code: `make mutation` (not part of `make test`).

Each mutant is one small change to one module (a comparison, a boolean operator, a number, a
string, a regex quantifier or character range, a deleted ``raise`` or call, a returned value);
the module's tests run against it and must fail. A mutant they do not notice "survives". Every
survivor must be listed in tools/mutation_equivalents.txt with the reason it cannot change what a
user of the gateway sees; otherwise the run fails and names it. It fails too on an entry with no
reason, on an entry whose mutant is killed or gone, and on a test file of TARGETS that does not
exist. A mutant's id names its module, its enclosing function, the source of its statement and
the change, so an entry cannot silently pass to another piece of code. A kill is reported by its
cause: a failing test, or (each named, as it may hide a mutant no test notices) an import or
collection error, a timeout, a crash.

Why a driver of our own rather than mutmut: mutmut mutates only inside functions, and much of
what guards the gateway is module level (the nonce, timestamp, sign and token regexes, the
256 KiB, 128-character and ±300 s limits). This walks the whole module's AST. Messages are left
alone (f-strings, and the strings given to an exception, ``problems.append`` or the logger):
a reworded message is not a weaker check.

Speed: the parent imports the heavy libraries once and forks one child per mutant; the child
imports the mutated module from memory (nothing is written to disk, so runs may overlap) and runs
pytest with ``-x``, the fast tests first. See README for how long a run takes.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import importlib.abc
import importlib.util
import os
import re
import select
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.txt"
_SHOWN_CHARS = 120

# Each module and the tests that pin it, fastest first (pytest stops at the first failure).
TARGETS: dict[str, list[str]] = {
    "protocol.signing": ["tests/test_validation_edges.py", "tests/test_protocol.py",
                         "tests/test_callback_route.py"],
    "protocol.tokens": ["tests/test_tokens_and_secrets.py", "tests/test_callback_route.py"],
    "protocol.aes": ["tests/test_protocol.py", "tests/test_tokens_and_secrets.py",
                     "tests/test_callback_route.py"],
    "protocol.credentials": ["tests/test_tokens_and_secrets.py", "tests/test_callback_route.py"],
    "protocol.payloads": ["tests/test_payloads.py", "tests/test_contract.py",
                          "tests/test_outbound_routes.py"],
    "protocol.json_body": ["tests/test_validation_edges.py", "tests/test_contract.py",
                           "tests/test_http_surface.py"],
    "protocol.verification": ["tests/test_callback_fields.py", "tests/test_validation_edges.py",
                              "tests/test_callback_route.py", "tests/test_http_surface.py"],
    "protocol.ip_allowlist": ["tests/test_validation_edges.py", "tests/test_callback_route.py"],
    "approvals.states": ["tests/test_states.py", "tests/test_lifecycle.py",
                         "tests/test_callback_route.py", "tests/test_lifecycle_model.py"],
    "approvals.store.base": ["tests/test_nonce_guard.py", "tests/test_callback_route.py",
                             "tests/test_costs_and_logs.py"],
    "runtime.settings": ["tests/test_settings.py", "tests/test_validation_edges.py"],
}
# Where a module holds more than validation, only these functions (scopes as in the mutant ids)
# are mutated: the store's replay guard, not its whole key layout.
SCOPES: dict[str, tuple[str, ...]] = {
    "approvals.store.base": ("StoreBase._nonce_put", "StoreBase._committed_already",
                             "StoreBase.use_nonce"),
}

_SWAP_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
                 ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
                 ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv,
               ast.FloorDiv: ast.Mult, ast.Div: ast.Mult, ast.Mod: ast.FloorDiv}
_MESSAGE_CALLS = {"append", "info", "warning", "error", "exception", "debug"}
_REGEX_CALLS = {"compile", "fullmatch", "match", "search"}


@dataclass(frozen=True)
class Mutant:
    module: str
    index: int
    ident: str


def _name_of(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant)
                                               and isinstance(node.value, str | bytes))


def _regex_variants(pattern: str) -> list[tuple[str, str]]:
    """(mutated pattern, description): quantifiers one off, one character range dropped. The
    description names the position, as the same range may appear twice in one pattern."""
    variants = []
    for match in re.finditer(r"\{(\d+)(?:,(\d+))?\}", pattern):
        low, high = int(match.group(1)), match.group(2)
        options = ([f"{{{low + 1}}}", f"{{{max(low - 1, 0)}}}"] if high is None else
                   [f"{{{low + 1},{high}}}", f"{{{max(low - 1, 0)},{high}}}",
                    f"{{{low},{int(high) + 1}}}", f"{{{low},{int(high) - 1}}}"])
        for option in options:
            if option != match.group(0):
                variants.append((pattern[:match.start()] + option + pattern[match.end():],
                                 f"{match.group(0)}->{option} at {match.start()}"))
    for match in re.finditer(r"(?<!\\)[A-Za-z0-9]-[A-Za-z0-9]", pattern):
        variants.append((pattern[:match.start()] + pattern[match.end():],
                         f"drop {match.group(0)} at {match.start()}"))
    for match in re.finditer(r"(?<![\\])[+*]", pattern):
        other = "*" if match.group(0) == "+" else "+"
        variants.append((pattern[:match.start()] + other + pattern[match.end():],
                         f"{match.group(0)}->{other} at {match.start()}"))
    return variants


def _shown(text: str) -> str:
    """Source as one line of an id: whole when short, else its start and a digest of the whole,
    so that an id stays specific to the code it was written for and readable in a file."""
    text = " ".join(text.split())
    if len(text) <= _SHOWN_CHARS:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{text[:_SHOWN_CHARS - 20]}... [{digest}]"


def _header(statement: ast.stmt) -> str:
    """The part of a statement that is not a nested block: an ``if``'s test, a ``for``'s target
    and iterable, a whole simple statement."""
    if isinstance(statement, ast.If | ast.While):
        return f"{type(statement).__name__.lower()} {ast.unparse(statement.test)}"
    if isinstance(statement, ast.For | ast.AsyncFor):
        return f"for {ast.unparse(statement.target)} in {ast.unparse(statement.iter)}"
    if isinstance(statement, ast.With | ast.AsyncWith):
        return "with " + ", ".join(ast.unparse(item) for item in statement.items)
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
        return f"def {statement.name}({ast.unparse(statement.args)})"
    if isinstance(statement, ast.ClassDef):
        return f"class {statement.name}"
    if isinstance(statement, ast.Try):
        return "try"
    return ast.unparse(statement)


class _Mutator(ast.NodeTransformer):
    """Walks a module in a fixed order; counts every mutation point and applies the one asked
    for (``target``), or none (``target=None``) while listing them all.

    A point is named by its enclosing function, the source of its statement and the change, so an
    entry of the equivalents file names one piece of code: a new guard's mutant never inherits an
    old entry, and an entry whose code changed goes stale instead of silently re-binding."""

    def __init__(self, target: int | None):
        self.target = target
        self.points: list[tuple[str, str, str]] = []  # (scope, statement, change)
        self.scope: list[str] = []
        self.statement: list[str] = []
        self.quiet = 0  # inside a message: strings are left alone
        self.regex = 0

    # -- bookkeeping --------------------------------------------------------------------------

    def visit(self, node):
        if not isinstance(node, ast.stmt):
            return super().visit(node)
        self.statement.append(_shown(_header(node)))
        try:
            return super().visit(node)
        finally:
            self.statement.pop()

    def _point(self, change: str) -> bool:
        """Registers a mutation point; True when it is the one to apply."""
        self.points.append((".".join(self.scope) or "<module>", self.statement[-1], change))
        return len(self.points) - 1 == self.target

    @staticmethod
    def _text(node: ast.AST) -> str:
        return _shown(ast.unparse(node))

    def _body(self, statements: list[ast.stmt]) -> list[ast.stmt]:
        # Skip docstrings.
        if statements and isinstance(statements[0], ast.Expr) and \
                isinstance(statements[0].value, ast.Constant) and \
                isinstance(statements[0].value.value, str):
            return [statements[0], *[self.visit(s) for s in statements[1:]]]
        return [self.visit(s) for s in statements]

    # -- structure -----------------------------------------------------------------------------

    def visit_Module(self, node):
        node.body = self._body(node.body)
        return node

    def _scoped(self, node):
        self.scope.append(node.name)
        node.body = self._body(node.body)
        if hasattr(node, "args"):
            node.args = self.visit(node.args)
        self.scope.pop()
        return node

    visit_FunctionDef = visit_ClassDef = _scoped

    def visit_arg(self, node):
        return node  # annotations

    def visit_AnnAssign(self, node):
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_ImportFrom(self, node):
        return node

    def visit_Import(self, node):
        return node

    def visit_JoinedStr(self, node):
        return node  # messages

    def visit_Call(self, node):
        name = _name_of(node.func)
        quiet = name in _MESSAGE_CALLS or name.endswith("Error")
        regex = name in _REGEX_CALLS and isinstance(node.func, ast.Attribute) and \
            isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
        self.quiet += quiet
        self.regex += regex
        node = self.generic_visit(node)
        self.quiet -= quiet
        self.regex -= regex
        return node

    # -- statements ----------------------------------------------------------------------------

    def visit_Raise(self, node):
        if self._point("deleted"):
            return ast.Pass()
        return self.generic_visit(node)

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Call) and self._point("deleted"):
            return ast.Pass()
        return self.generic_visit(node)

    def visit_Return(self, node):
        # A returned constant is mutated as a constant (True <-> False, n +/- 1); None in
        # place of False would be the same answer to an `if`.
        returns_something = node.value is not None and not isinstance(node.value, ast.Constant)
        if returns_something and self._point("-> return None"):
            return ast.Return(value=ast.Constant(None))
        return self.generic_visit(node)

    # -- expressions ---------------------------------------------------------------------------

    def visit_Compare(self, node):
        node = self.generic_visit(node)
        for position, op in enumerate(node.ops):
            swapped = _SWAP_COMPARE.get(type(op))
            if swapped and self._point(f"`{self._text(node)}` {type(op).__name__}->"
                                       f"{swapped.__name__}"):
                node.ops[position] = swapped()
        return node

    def visit_BoolOp(self, node):
        node = self.generic_visit(node)
        other = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._point(f"`{self._text(node)}` {type(node.op).__name__}->{other.__name__}"):
            node.op = other()
        return node

    def visit_UnaryOp(self, node):
        node = self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._point(f"drop not in `{self._text(node)}`"):
            return node.operand
        return node

    def visit_BinOp(self, node):
        node = self.generic_visit(node)
        swapped = _SWAP_BINOP.get(type(node.op))
        if swapped and not _is_text(node.left) and not _is_text(node.right) and \
                self._point(f"`{self._text(node)}` {type(node.op).__name__}->{swapped.__name__}"):
            node.op = swapped()
        return node

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool):
            if self._point(f"{value}->{not value}"):
                return ast.Constant(not value)
        elif isinstance(value, int | float):
            for new in dict.fromkeys([value + 1, value - 1]):
                if self._point(f"{value!r}->{new!r}"):
                    return ast.Constant(new)
        elif isinstance(value, str) and self.regex:
            for pattern, description in _regex_variants(value):
                if self._point(f"regex {description}"):
                    return ast.Constant(pattern)
        elif isinstance(value, str) and not self.quiet:
            shown = value if len(value) <= 30 else value[:27] + "..."
            if self._point(f"string {shown!r} -> 'XX...XX'"):
                return ast.Constant(f"XX{value}XX")
        return node


def _path_of(module: str) -> Path:
    """``protocol.signing`` is chalicelib/protocol/signing.py."""
    return ROOT / "chalicelib" / (module.replace(".", "/") + ".py")


def _in_scopes(module: str, scope: str) -> bool:
    wanted = SCOPES.get(module)
    return wanted is None or any(scope == w or scope.startswith(w + ".") for w in wanted)


def mutants_of(module: str, source: str | None = None) -> tuple[str, list[Mutant]]:
    """The module's source and its mutants, each with its id:
    ``<module>:<scope>: `<statement>`: <change>``, and `` #2``, `` #3`` for the same change
    made again in the same statement (``(0, 0)``)."""
    if source is None:
        source = _path_of(module).read_text(encoding="utf-8")
    walker = _Mutator(None)
    walker.visit(ast.parse(source))
    seen: dict[str, int] = {}
    result = []
    for index, (scope, statement, change) in enumerate(walker.points):
        if not _in_scopes(module, scope):
            continue
        ident = f"{module}:{scope}: `{statement}`: {change}"
        seen[ident] = seen.get(ident, 0) + 1
        if seen[ident] > 1:
            ident += f" #{seen[ident]}"
        result.append(Mutant(module, index, ident))
    return source, result


def mutated_code(module: str, source: str, index: int):
    tree = _Mutator(index).visit(ast.parse(source))
    ast.fix_missing_locations(tree)
    return compile(tree, str(_path_of(module)), "exec")


class _InMemory(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, fullname: str, code):
        self.fullname, self.code = fullname, code

    def find_spec(self, fullname, path, target=None):
        if fullname != self.fullname:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=self.code.co_filename)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = self.code.co_filename
        exec(self.code, module.__dict__)  # noqa: S102 - the mutant under test


def _run_tests(module: str, code, tests: list[str]) -> int:
    """Fork; in the child, import the mutant (or the original when ``code`` is None) and run
    the tests. Returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        if code is not None:
            sys.meta_path.insert(0, _InMemory(f"chalicelib.{module}", code))
        import pytest

        status = pytest.main([*tests, "-x", "-q", "-p", "no:cacheprovider", "-m", "not e2e",
                              "-W", "ignore", "--timeout", "120"])
        os._exit(int(status))
    except BaseException:  # noqa: BLE001 - the child must never return into the parent
        os._exit(99)


def _preload() -> None:
    """Import what every child needs, once, in the parent (never chalicelib or app)."""
    import boto3  # noqa: F401
    import botocore.session  # noqa: F401
    import chalice.test  # noqa: F401
    import hypothesis  # noqa: F401
    import pytest  # noqa: F401
    import requests  # noqa: F401
    import yaml  # noqa: F401
    from aws_lambda_powertools import Logger  # noqa: F401
    from Crypto.Cipher import AES  # noqa: F401
    assert not any(name == "app" or name.startswith("chalicelib") for name in sys.modules)


def _wait(pid: int, timeout: float) -> int | None:
    """The exit status, or None after killing a child that ran past ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        select.select([], [], [], 0.05)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


class SetupError(Exception):
    """The run cannot be trusted as configured: a bad equivalents entry, a missing test file."""


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, str]:
    """``<mutant id> :: <reason>`` per line. Raises SetupError on an entry with no reason, one
    listed twice, or one for a module the tool does not know: each would hide a survivor."""
    entries: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        ident, _, reason = line.partition(" :: ")
        ident, reason = ident.strip(), reason.strip()
        where = f"{path.name} line {number}"
        if not reason:
            raise SetupError(f"{where}: no reason given (`<mutant id> :: <why it is"
                             f" equivalent>`): {ident}")
        if ident in entries:
            raise SetupError(f"{where}: listed twice: {ident}")
        if ident.split(":", 1)[0] not in TARGETS:
            raise SetupError(f"{where}: no such module in TARGETS: {ident}")
        entries[ident] = reason
    return entries


def missing_test_files(modules: list[str]) -> list[str]:
    """The test files named in TARGETS for ``modules`` that do not exist: running without one
    would let its module's mutants survive, or be killed, for the wrong reason."""
    return [f"{module}: {path}" for module in modules for path in TARGETS[module]
            if not (ROOT / path).is_file()]


# How a mutant was detected, from the child's exit status (pytest's exit codes; None: it ran
# past the timeout). Only a failing test is a kill by the tests' own assertions; the others are
# counted as kills too but named in the report, as each may hide a mutant no test notices.
TEST_FAILED = "a test failed"
CAUSES = {1: TEST_FAILED, 2: "import or collection error", 3: "pytest internal error",
          4: "pytest usage error", 5: "no tests ran", None: "timeout"}


def kill_cause(status: int | None) -> str:
    if status in CAUSES:
        return CAUSES[status]
    if status is not None and status < 0:
        return f"crashed (signal {-status})"
    return f"crashed (exit {status})"


def summary(module: str, causes: dict[str, int], survived: int, baseline: float) -> str:
    """One line per module: how many mutants, how each kill happened, how many survived."""
    total = sum(causes.values()) + survived
    ways = ", ".join(f"{count} {cause}" for cause, count in
                     sorted(causes.items(), key=lambda item: (item[0] != TEST_FAILED, item[0])))
    return (f"{module}: {total} mutants, {sum(causes.values())} killed ({ways or 'none'}),"
            f" {survived} survived, baseline {baseline:.0f} s")


# The children running now: pid -> (mutant, or None for the clean run; start time).
RUNNING: dict[int, tuple[Mutant | None, float]] = {}


def _stop_children_on_exit() -> None:
    """Children run in their own sessions: if the driver is interrupted or terminated, end each
    one it started (by its process group) rather than leave them running."""
    def stop(signum, frame):
        for pid in list(RUNNING):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--verbose", action="store_true", help="also list the killed mutants")
    parser.add_argument("--only", help="run only mutants whose id contains this text")
    args = parser.parse_args(argv)
    args.modules = args.modules or list(TARGETS)
    unknown = set(args.modules) - set(TARGETS)
    if unknown:
        parser.error(f"unknown modules: {', '.join(sorted(unknown))}")
    os.chdir(ROOT)
    try:
        equivalents = load_equivalents()
    except SetupError as exc:
        print(f"mutation: {exc}", file=sys.stderr)
        return 2
    missing = missing_test_files(list(TARGETS))
    if missing:
        print("mutation: test files named in TARGETS do not exist: " + "; ".join(missing),
              file=sys.stderr)
        return 2
    plan = []
    for module in args.modules:
        source, mutants = mutants_of(module)
        if args.only:
            mutants = [m for m in mutants if args.only in m.ident]
        plan.append((module, source, mutants))
    if args.list:
        for _, _, mutants in plan:
            for mutant in mutants:
                print(mutant.ident)
        return 0
    _preload()
    _stop_children_on_exit()
    started = time.monotonic()
    survivors, stale, total = [], [], 0
    for module, source, mutants in plan:
        tests = TARGETS[module]
        clean_start = time.monotonic()
        pid = _run_tests(module, None, tests)
        RUNNING[pid] = (None, clean_start)
        status = _wait(pid, 900)
        del RUNNING[pid]
        baseline = time.monotonic() - clean_start
        if status != 0:
            print(f"{module}: the tests fail without any mutant (exit {status}); fix them first")
            return 2
        timeout = max(30.0, 3 * baseline)
        running = RUNNING
        queue = list(mutants)
        causes: dict[str, int] = {}
        survived = 0
        while queue or running:
            while queue and len(running) < args.jobs:
                mutant = queue.pop(0)
                code = mutated_code(module, source, mutant.index)
                running[_run_tests(module, code, tests)] = (mutant, time.monotonic())
            for pid, (mutant, since) in list(running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done and time.monotonic() - since < timeout:
                    continue
                if not done:
                    os.killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    code = None
                else:
                    code = os.waitstatus_to_exitcode(status)
                del running[pid]
                if code == 0:
                    survived += 1
                    if mutant.ident not in equivalents:
                        survivors.append(mutant.ident)
                        print(f"SURVIVED  {mutant.ident}", flush=True)
                    continue
                cause = kill_cause(code)
                causes[cause] = causes.get(cause, 0) + 1
                if cause != TEST_FAILED or args.verbose:
                    print(f"killed    {mutant.ident} ({cause}, {time.monotonic() - since:.1f} s)",
                          flush=True)
                if mutant.ident in equivalents:
                    stale.append(mutant.ident)
            select.select([], [], [], 0.02)
        total += len(mutants)
        print(summary(module, causes, survived, baseline), flush=True)
        if set(causes) - {TEST_FAILED}:
            # A kill that is no failing test may be the machine's doing, not the mutant's (a
            # package reinstalled mid-run made every child crash): the clean run tells.
            pid = _run_tests(module, None, tests)
            RUNNING[pid] = (None, time.monotonic())
            status = _wait(pid, 900)
            del RUNNING[pid]
            if status != 0:
                print(f"{module}: the tests now fail without any mutant (exit {status}): its"
                      " kills other than failing tests cannot be trusted; run it again")
                return 2
    known = {m.ident for _, _, mutants in plan for m in mutants}
    if not args.only:
        for ident in equivalents:
            if ident.split(":", 1)[0] in args.modules and ident not in known:
                stale.append(ident)
    minutes = (time.monotonic() - started) / 60
    print(f"{total} mutants in {minutes:.1f} min; {len(survivors)} survived unexplained,"
          f" {len(stale)} listed as equivalent but killed or gone")
    for ident in stale:
        print(f"STALE     {ident}")
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
