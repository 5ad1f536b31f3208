"""The core's import graph: no import cycle anywhere, and every core module placed in the layers contract."""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp
import pytest

CORE = "cxr_viewer.core"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("cxr_viewer", include_external_packages=False)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_no_import_cycle_in_core(graph: grimp.ImportGraph) -> None:
    """Module by module (packages' ``__init__`` included, imports inside functions and TYPE_CHECKING too)."""
    modules = {m for m in graph.modules if m == CORE or m.startswith(CORE + ".")}
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules} for m in modules}
    found = cycles(edges)

    def where(comp: list[str]) -> str:
        lines = []
        for a in comp:
            for b in sorted(edges[a] & set(comp)):
                for d in graph.get_import_details(importer=a, imported=b):
                    lines.append(f"  {a} -> {b} (line {d['line_number']}: {d['line_contents']})")
        return "\n".join(lines)

    assert not found, "import cycles in cxr_viewer.core:\n" + "\n\n".join(where(c) for c in found)


def test_every_core_module_sits_in_a_layer(graph: grimp.ImportGraph) -> None:
    """A new core module or package must be given its place in the core layers contract (pyproject.toml)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["name"].startswith("core layers"))
    placed = {name.strip() for layer in contract["layers"] for part in layer.split("|") for name in part.split(":")}
    children = graph.find_children(CORE)
    assert children, "grimp found no core modules"
    assert sorted(children - placed) == [], "core modules outside the core layers contract"
    assert sorted(placed - children) == [], "the core layers contract names modules that do not exist"
