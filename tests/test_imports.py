"""The package's layers import downward only (web -> analysis/dicom/fhir -> store -> clinical, config, events), and a
command that needs no server (hash-password) does not pay for loading the DICOM, model and imaging libraries."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import xrayvision

PACKAGE = Path(xrayvision.__file__).parent
ROOT = PACKAGE.parent
# Rank of each top-level part; a module may import only parts of a lower rank (or its own part, for rank 0 and 4).
RANKS = {
    **dict.fromkeys(("clinical", "config", "events", "timeutil", "files", "tasks", "memory", "privacy",
                     "resources", "logthrottle", "connections", "__init__"), 0),
    # keys imports nothing of ours at run time (its value types are TYPE_CHECKING imports), so web may use it.
    "keys": 0,
    "store": 1,
    "dicom": 2,
    "analysis": 2,
    "fhir": 2,
    "web": 3,
    **dict.fromkeys(("app", "cli", "__main__"), 4),
}
SHARED_RANKS = (0, 4)  # parts of these ranks may import one another; store, dicom, analysis and web may not


def _part(module: Path) -> str:
    relative = module.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.ImportFrom | ast.Import]:
    found: list[ast.ImportFrom | ast.Import] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _named(base: list[str], name: str) -> list[str]:
    """`from <base> import name`: a module of that name, else a name defined in the package <base> itself."""
    folder = ROOT.joinpath(*base)
    if (folder / f"{name}.py").exists() or (folder / name).is_dir():
        return [*base, name]
    return base if len(base) > 1 else [*base, "__init__"]


def imported_parts(module: Path) -> set[str]:
    """The top-level parts of xrayvision that `module` imports at run time."""
    package = module.relative_to(ROOT).with_suffix("").parts[:-1]  # ('xrayvision', 'store') for store/exams.py
    parts = set()
    for node in _runtime_imports(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names if alias.name.startswith("xrayvision")]
        elif node.level:
            base = list(package[: len(package) - node.level + 1])
            names = [base + node.module.split(".")] if node.module else [_named(base, a.name) for a in node.names]
        else:
            names = [node.module.split(".")] if node.module and node.module.startswith("xrayvision") else []
        parts.update(name[1] for name in names if len(name) > 1)
    return parts


def edges() -> set[tuple[str, str]]:
    return {(_part(path), target) for path in PACKAGE.rglob("*.py") for target in imported_parts(path)
            if target != _part(path)}


def test_every_part_has_a_rank() -> None:
    assert {_part(path) for path in PACKAGE.rglob("*.py")} <= set(RANKS)


def test_the_store_imports_nothing_above_it() -> None:
    above = {"dicom", "analysis", "web", "app", "cli", "keys"}
    for path in sorted((PACKAGE / "store").glob("*.py")):
        assert not imported_parts(path) & above, path.name


def test_imports_go_downward_only() -> None:
    wrong = sorted((source, target) for source, target in edges()
                   if RANKS[target] > RANKS[source]
                   or (RANKS[target] == RANKS[source] and RANKS[source] not in SHARED_RANKS))
    assert wrong == []


@pytest.mark.parametrize("statement", [
    "import xrayvision.cli",
    "from xrayvision.web.auth import hash_password; hash_password('a password')",
])
def test_the_command_line_loads_no_heavy_library(statement: str) -> None:
    heavy = ("pynetdicom", "pydicom", "openai", "numpy", "PIL")
    code = f"import json, sys; {statement}; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                          check=True)
    assert json.loads(done.stdout) == []
