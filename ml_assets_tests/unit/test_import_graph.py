"""The import graph of ml_assets/ and serving/ has no cycle, and the stage modules stand
side by side.

Built from the source (AST), so an import inside a function counts as much as one at the
top of a file: a lazy import that closes a circle only moves the failure from import time
to call time. Nodes are this repository's modules (a package is its `pkg.__init__`). An
edge goes to the module an import names: `import a.b.c` and `from a.b import c` (c a
submodule) to a.b.c; `from a.b import name` (no submodule of that name) and `import a.b`
to a.b.__init__. Importing a.b.c also runs a/__init__.py and a/b/__init__.py, but those
are edges only when a file imports the package itself; relative imports are resolved
against the importing file.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ml_assets", "serving")

# ml_assets/*.py that may import the stage modules: the definitions (they assemble every
# stage), the automation (jobs and sensors over the whole graph) and the CLI (a front
# door onto all of it). `shared` holds the Dagster objects several stages use (the daily
# partitions, check names), `in_place` the readers of rows production_data kept in place
# and `settings` the environment: stages import them, they import no stage.
ASSEMBLERS = {"definitions", "automation", "cli"}
SHARED = {"shared", "in_place", "settings"}


# --- the graph ----------------------------------------------------------------------------

def module_name(path: Path, root: Path = REPO) -> str:
    """a/b/c.py -> a.b.c; a/b/__init__.py -> a.b.__init__."""
    return ".".join(path.relative_to(root).with_suffix("").parts)


def repo_modules(root: Path = REPO, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted name -> file, for every .py file under the packages."""
    return {module_name(path, root): path
            for package in packages for path in sorted((root / package).rglob("*.py"))}


def _node(name: str, modules: Mapping[str, object]) -> str | None:
    """The module `name`, or the __init__ of the package `name`, when in the repository."""
    for candidate in (name, f"{name}.__init__"):
        if candidate in modules:
            return candidate
    return None


def _known(name: str, modules: Mapping[str, object]) -> str | None:
    """`name` or its longest prefix that is a module or package of this repository."""
    while name:
        node = _node(name, modules)
        if node:
            return node
        name = name.rpartition(".")[0]
    return None


def imported_modules(module: str, path: Path, modules: Mapping[str, object]) -> set[str]:
    """The repository modules `module` imports anywhere in its file."""
    found: set[str] = set()
    package = module.rpartition(".")[0]  # where relative imports start (a.b for a.b.c)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name, modules)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                target = (_node(f"{source}.{alias.name}", modules)
                          or _known(source, modules))
                if target:
                    found.add(target)
    found.discard(module)  # a package's __init__ naming itself: `from . import name`
    return found


def import_graph(root: Path = REPO, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    modules = repo_modules(root, packages)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


# --- cycles -------------------------------------------------------------------------------

def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, in sorted order;
    only components that hold a cycle (more than one node, or a node importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for child in edges:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        components.append(sorted(component))
    return sorted(components)


def cycle_through(start: str, graph: Mapping[str, Iterable[str]]) -> list[str]:
    """A shortest import path from `start` back to itself: [start, ..., start]."""
    parents: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if child not in parents:
                parents[child] = node
                queue.append(child)
    return []


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle path per strongly connected component."""
    return [cycle_through(component[0], graph) for component in strongly_connected(graph)]


def describe(found: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join("  " + " -> ".join(cycle) for cycle in found)


# --- the cycle finder itself --------------------------------------------------------------

def test_the_cycle_finder_finds_a_cycle_and_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert strongly_connected(graph) == [["a", "b", "c"], ["e"]]
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert "a -> b -> c -> a" in describe(cycles(graph))
    with pytest.raises(AssertionError, match="a -> b -> c -> a"):
        assert not cycles(graph), describe(cycles(graph))


def test_the_cycle_finder_passes_a_graph_without_cycle():
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}) == []


def test_the_graph_resolves_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import helper\n")
    (pkg / "sub" / "__init__.py").write_text("from .helper import thing\n")
    (pkg / "sub" / "helper.py").write_text("thing = 1\n")
    (pkg / "sub" / "other.py").write_text(
        "from . import helper\nfrom .. import top\n"
        "def later():\n    from pkg.sub import thing\n    import pkg.top\n")
    (pkg / "top.py").write_text("def f():\n    from pkg.sub.other import later\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert graph == {
        "pkg.__init__": {"pkg.sub.helper"},
        "pkg.sub.__init__": {"pkg.sub.helper"},
        "pkg.sub.helper": set(),
        "pkg.sub.other": {"pkg.sub.helper", "pkg.top", "pkg.sub.__init__"},
        "pkg.top": {"pkg.sub.other"},
    }
    assert cycles(graph) == [["pkg.sub.other", "pkg.top", "pkg.sub.other"]]


# --- this repository ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def _cycles_in(graph: dict[str, set[str]], package: str) -> list[list[str]]:
    return [c for c in cycles(graph) if c[0] == package or c[0].startswith(f"{package}.")]


def test_the_graph_covers_both_packages(graph):
    assert "ml_assets.definitions" in graph and "serving.app" in graph
    assert "ml_assets.core.data.schemas" in graph["ml_assets.core.data.schema_inference"]


def test_ml_assets_has_no_import_cycle(graph):
    found = _cycles_in(graph, "ml_assets")
    assert not found, describe(found)


def test_ml_assets_core_has_no_import_cycle(graph):
    core = {name: {t for t in targets if t.startswith("ml_assets.core")}
            for name, targets in graph.items() if name.startswith("ml_assets.core")}
    assert len(core) > 20
    assert not cycles(core), describe(cycles(core))


def test_serving_has_no_import_cycle(graph):
    found = _cycles_in(graph, "serving")
    assert not found, describe(found)


def _stages() -> set[str]:
    names = {path.stem for path in (REPO / "ml_assets").glob("*.py")}
    return names - ASSEMBLERS - SHARED - {"__init__"}


def test_the_exempt_modules_exist():
    top = {path.stem for path in (REPO / "ml_assets").glob("*.py")}
    assert ASSEMBLERS | SHARED <= top
    assert {"ingestion", "validation", "features", "training", "evaluation", "registry",
            "monitoring", "rollout", "batch"} <= _stages()


def stage_offenders(graph: Mapping[str, Iterable[str]], stages: set[str]) -> list[str]:
    """"stage -> stage" for every import between two of `stages`."""
    return sorted(f"{stage} -> {target}" for stage in stages
                  for target in graph.get(stage, ()) if target in stages and target != stage)


def test_the_stage_check_sees_a_stage_importing_another():
    graph = {"s.a": {"s.core", "s.b"}, "s.b": {"s.core"}, "s.core": set(),
             "s.definitions": {"s.a", "s.b"}}
    assert stage_offenders(graph, {"s.a", "s.b"}) == ["s.a -> s.b"]
    assert stage_offenders({**graph, "s.a": {"s.core"}}, {"s.a", "s.b"}) == []


def test_stage_modules_do_not_import_each_other(graph):
    offenders = stage_offenders(graph, {f"ml_assets.{name}" for name in _stages()})
    assert offenders == [], ("stage modules import each other (move the helper to "
                             "ml_assets/core or ml_assets/shared.py): " + ", ".join(offenders))


def test_shared_modules_import_no_stage_or_assembler(graph):
    top = {f"ml_assets.{name}" for name in _stages() | ASSEMBLERS}
    for name in SHARED:
        assert not graph[f"ml_assets.{name}"] & top, name
