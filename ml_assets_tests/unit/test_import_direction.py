"""Arrows between ml_assets/ and serving/ point one way: serving imports ml_assets, never
the reverse; ml_assets.core (the shared pure layer, prediction log included) imports
no Dagster. Checked on the source (AST), so lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ml_assets"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def _offenders(root: Path, top: str) -> list[str]:
    return sorted(f"{path.relative_to(PACKAGE.parent)}: {name}"
                  for path in root.rglob("*.py") for name in _imports(path)
                  if name == top or name.startswith(f"{top}."))


def test_nothing_under_ml_assets_imports_serving():
    assert list(PACKAGE.rglob("*.py"))
    assert _offenders(PACKAGE, "serving") == []


def test_nothing_under_ml_assets_core_imports_dagster():
    core = PACKAGE / "core"
    assert (core / "prediction_log" / "base.py").exists()
    assert _offenders(core, "dagster") == []
    assert _offenders(core, "serving") == []
