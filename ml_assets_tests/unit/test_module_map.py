"""The map a newcomer reads is the tree: docs/architecture.md is generated from the
modules' docstrings and must be current; the README's layout names every package
folder there is, and every source path the docs mention exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module_map():
    spec = importlib.util.spec_from_file_location("module_map", ROOT / "scripts/module_map.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_architecture_is_generated_from_the_tree():
    module_map = _module_map()
    text = module_map.render()
    assert (ROOT / "docs/architecture.md").read_text() == text, (
        "docs/architecture.md is out of date: run `python scripts/module_map.py`")
    for folder in ("ml_assets", "serving", "ml_assets_tests/support"):
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT / folder)
            name = f"{rel.parent.as_posix()}/" if path.name == "__init__.py" else rel.as_posix()
            assert f"`{'(package)' if name == './' else name}`" in text, path


def test_a_module_without_a_docstring_fails_the_map(tmp_path):
    module_map = _module_map()
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "bare.py").write_text("X = 1\n")
    module_map.ROOT = tmp_path
    with pytest.raises(module_map.MissingDocstring, match="bare.py has no module docstring"):
        module_map.summary(tmp_path / "serving" / "bare.py")


def _readme_layout() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1]
    return section.split("```", 2)[1]


def test_readme_layout_names_every_package_folder():
    layout = _readme_layout()
    named = set(re.findall(r"([\w/]+/)", layout))
    folders = set()
    for top in ("ml_assets", "serving", "ml_assets_tests"):
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                folders.add(init.parent.name + "/")
    missing = sorted(f for f in folders if f not in named)
    assert not missing, f"README's Architecture layout does not name {missing}"


def test_source_paths_in_the_docs_exist():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    stale = []
    for doc in docs:
        for path in set(re.findall(r"\b((?:ml_assets|serving|ml_assets_tests|scripts|"
                                   r"benchmarks)/[\w/]*\w\.py)\b", doc.read_text())):
            if not (ROOT / path).exists():
                stale.append(f"{doc.name}: {path}")
    assert not stale, f"the docs name files that do not exist: {sorted(stale)}"


def test_serving_doc_module_table_lists_every_serving_file():
    text = (ROOT / "docs/serving.md").read_text()
    table = text.split("| module (under `serving/`) |", 1)[1].split("\n\n", 1)[0]
    listed = {m for m in re.findall(r"^\| `([\w/]+\.py)` \|", table, re.M)}
    files = {p.relative_to(ROOT / "serving").as_posix() for p in (ROOT / "serving").rglob("*.py")
             if "__pycache__" not in p.parts}
    assert listed == files, (f"docs/serving.md's module table: missing {sorted(files - listed)}, "
                             f"stale {sorted(listed - files)}")


def test_no_product_file_is_over_600_lines():
    """A file a reviewer can read whole: past 600 lines a module holds more than one thing."""
    long = sorted(f"{p.relative_to(ROOT)}: {n}" for top in ("ml_assets", "serving")
                  for p in (ROOT / top).rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > 600)
    assert not long, f"split these by what they do: {long}"
