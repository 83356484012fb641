"""The layers of chalicelib, pinned: imports run one way, routes (app.py) → approvals → protocol
and runtime, and the protocol imports nothing of AWS. Every import counts, the ones inside a
function (loaded on first use) too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "chalicelib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((LIBRARY / package).rglob("*.py"))


def _imported_by(package: str) -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in _modules(package)}


def _offending(imports: dict[str, set[str]], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{module} imports {name}" for module, names in imports.items()
                  for name in names
                  if any(name == f or name.startswith(f + ".") for f in forbidden))


def test_the_three_layers_hold_every_module_of_the_library():
    top_level = sorted(path.name for path in LIBRARY.glob("*.py"))
    assert top_level == ["__init__.py", "errors.py"], (
        "chalicelib's modules live in protocol/, approvals/ or runtime/; only the errors every"
        f" layer raises stay at the top: {top_level}")
    for package in ("protocol", "approvals", "runtime"):
        assert _modules(package), package


def test_the_protocol_imports_nothing_of_aws_the_store_or_chalice():
    assert _offending(_imported_by("protocol"), (
        "boto3", "botocore", "chalice", "chalicelib.approvals", "chalicelib.runtime.aws",
        "chalicelib.runtime.tables", "chalicelib.runtime.secrets_cache",
        "chalicelib.runtime.settings")) == []


def test_the_domain_never_imports_chalice_or_the_routes():
    assert _offending(_imported_by("approvals"), ("chalice", "app")) == []


def test_the_runtime_knows_nothing_of_approvals_or_the_protocol():
    assert _offending(_imported_by("runtime"), (
        "chalice", "app", "chalicelib.approvals", "chalicelib.protocol")) == []


@pytest.mark.parametrize("package", ["protocol", "approvals", "runtime"])
def test_nothing_in_the_library_imports_the_routes(package):
    assert _offending(_imported_by(package), ("app",)) == []


def test_the_store_splits_by_use_case_and_no_module_of_it_is_large():
    sizes = {path.name: len(path.read_text(encoding="utf-8").splitlines())
             for path in (LIBRARY / "approvals" / "store").glob("*.py")}
    assert {"claims.py", "callbacks.py", "reads.py"} <= set(sizes)
    assert max(sizes.values()) <= 420, sizes


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The test's own teeth: a lazy boto3 import inside a function is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import boto3.session\n    from chalicelib.approvals import store\n")
    found = _offending({"m": _imports(module)}, ("boto3", "chalicelib.approvals"))
    assert found == ["m imports boto3.session", "m imports chalicelib.approvals",
                     "m imports chalicelib.approvals.store"]
