"""No import circle in the `autotuner` package, function-local (lazy) imports counted.

The layers contracts in pyproject.toml (lint-imports) see only imports between the layers they
name; a circle inside one package, or one made of imports inside functions, gets past them. This
builds the whole import graph with grimp (import-linter's own library, which reads every import
statement, at module level, inside functions and under TYPE_CHECKING) and fails on any cycle,
printing it with the line of each import.
"""

from __future__ import annotations

from itertools import pairwise

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("autotuner", cache_dir=None)


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """The graph's strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt)))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
    return found


def one_cycle(graph: grimp.ImportGraph, component: set[str]) -> list[str]:
    """A shortest circle through the component's first module, as 'a:LINE -> b' steps."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.find_modules_directly_imported_by(node) & component):
                if nxt == start:
                    path = [*paths[node], start]
                    return [f"{a} (line {_line(graph, a, b)}) -> {b}" for a, b in pairwise(path)]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    return sorted(component)


def _line(graph: grimp.ImportGraph, importer: str, imported: str) -> int:
    return int(graph.get_import_details(importer=importer, imported=imported)[0]["line_number"])


def test_the_graph_holds_imports_made_inside_functions(graph: grimp.ImportGraph) -> None:
    # make_executor imports its implementations only when asked for one, inside the function.
    details = graph.get_import_details(importer="autotuner.execution", imported="autotuner.execution.local")
    assert details and details[0]["line_contents"].startswith("from autotuner.execution.local import")
    assert graph.direct_import_exists(
        importer="autotuner.execution", imported="autotuner.execution.ray_executor"
    )


def test_the_package_has_no_import_circle(graph: grimp.ImportGraph) -> None:
    circles = strongly_connected(graph)
    shown = "\n".join("  " + "\n  ".join(one_cycle(graph, c)) + "\n" for c in circles)
    assert not circles, f"import circles (lazy imports counted):\n{shown}"


def test_the_cycle_finder_finds_a_circle() -> None:
    # The finder itself, on a graph with one circle of three and a module outside it.
    g = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c", "p.d"):
        g.add_module(m)
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.a")):
        g.add_import(importer=a, imported=b, line_number=1, line_contents=f"import {b}")
    assert strongly_connected(g) == [{"p.a", "p.b", "p.c"}]
    assert one_cycle(g, {"p.a", "p.b", "p.c"}) == [
        "p.a (line 1) -> p.b",
        "p.b (line 1) -> p.c",
        "p.c (line 1) -> p.a",
    ]
