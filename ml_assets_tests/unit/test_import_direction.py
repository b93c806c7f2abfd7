"""Arrows between ml_assets/ and serving/ point one way: serving imports ml_assets, never
the reverse; ml_assets.core (the shared pure layer, prediction log included) imports
no Dagster, no serving and nothing of ml_assets outside the core but the settings (a
leaf: environment variables read into a dataclass): no stage module, no resource, no
shared Dagster object. Checked on the source (AST), so lazy imports inside functions
count too, and relative imports are resolved against the importing file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ml_assets"
CORE = PACKAGE / "core"
# The core's domain packages, each checked on its own (a new one is added here).
DOMAINS = ("artifacts", "batch", "data", "drift", "estimation", "modeling", "prediction_log",
           "registry", "rollout")


def _module(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module name `path` imports (`from a import b` also as a.b), relative
    imports resolved (`root`: the directory holding the top package)."""
    found = set()
    module = _module(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[:len(parts) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def _offenders(root: Path, top: str) -> list[str]:
    return sorted(f"{path.relative_to(PACKAGE.parent)}: {name}"
                  for path in root.rglob("*.py") for name in _imports(path)
                  if name == top or name.startswith(f"{top}."))


def test_imports_are_read_from_the_source():
    found = _imports(CORE / "data" / "validation.py")
    assert "ml_assets.core.data.schemas" in found
    assert _module(CORE / "data" / "__init__.py") == "ml_assets.core.data"


def test_nothing_under_ml_assets_imports_serving():
    assert list(PACKAGE.rglob("*.py"))
    assert _offenders(PACKAGE, "serving") == []


def test_nothing_under_ml_assets_core_imports_dagster():
    assert (CORE / "prediction_log" / "base.py").exists()
    assert _offenders(CORE, "dagster") == []
    assert _offenders(CORE, "serving") == []


def test_the_core_is_its_domain_packages():
    found = {p.name for p in CORE.iterdir() if (p / "__init__.py").exists()}
    assert found == set(DOMAINS)
    assert sorted(p.name for p in CORE.glob("*.py")) == ["__init__.py"]


# What the core may import of ml_assets outside itself (the operator's skops extras are
# read through it); it imports nothing of this repository (checked below).
CORE_MAY_IMPORT = ("ml_assets.settings",)


def _outside_core(names: set[str]) -> list[str]:
    """The ml_assets modules outside ml_assets.core (and CORE_MAY_IMPORT) among `names`."""
    return sorted(name for name in names if name == "ml_assets" or (
        name.startswith("ml_assets.") and name != "ml_assets.core"
        and not name.startswith(("ml_assets.core.", *CORE_MAY_IMPORT))))


def test_what_the_core_may_import_imports_nothing_of_the_repository():
    for name in CORE_MAY_IMPORT:
        path = PACKAGE.parent / f"{name.replace('.', '/')}.py"
        assert path.exists(), name
        assert [n for n in _imports(path) if n.split(".")[0] in ("ml_assets", "serving")
                ] == [], name


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_core_domain_imports_only_the_core(domain):
    """No Dagster, no serving, and of ml_assets only the core (and the settings): no
    stage module (ingestion ... batch, definitions, automation, cli), no shared Dagster
    objects, no resources."""
    root = CORE / domain
    assert (root / "__init__.py").exists() and len(list(root.rglob("*.py"))) >= 2
    assert _offenders(root, "dagster") == []
    assert _offenders(root, "serving") == []
    outside = {f"{path.relative_to(PACKAGE.parent)}: {name}"
               for path in root.rglob("*.py") for name in _outside_core(_imports(path))}
    assert sorted(outside) == []


def test_the_check_sees_stage_resource_and_shared_imports(tmp_path):
    """A core module importing a stage, a resource or the shared Dagster objects, lazily
    or relatively, is caught (the settings are allowed)."""
    fake = tmp_path / "ml_assets" / "core" / "data"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text(
        "from ml_assets.core.data import schemas\n"
        "def f():\n    from ml_assets.monitoring import x\n"
        "    from ...resources import DataSourceResource\n"
        "    from ml_assets.shared import daily_partitions\n"
        "    import ml_assets.settings\n")
    assert _outside_core(_imports(fake / "bad.py", tmp_path)) == [
        "ml_assets.monitoring", "ml_assets.monitoring.x", "ml_assets.resources",
        "ml_assets.resources.DataSourceResource", "ml_assets.shared",
        "ml_assets.shared.daily_partitions"]
