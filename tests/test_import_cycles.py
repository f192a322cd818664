"""No import circle inside the runner packages, imports inside functions counted: grimp (the
graph library under import-linter) reads every import statement of a module, not only the ones
run at import time, so a circle hidden in a function body is found too."""

from __future__ import annotations

import grimp
import pytest

PACKAGES = ["autotuner.runners", "autotuner.backends"]
GRAPH = grimp.build_graph("autotuner")


def circles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """The strongly connected sets of more than one module inside a package (Tarjan)."""
    mods = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    inside = set(mods)
    edges = {m: sorted(n for n in graph.find_modules_directly_imported_by(m) if n in inside) for m in mods}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in edges[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                group.append(n)
                if n == m:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for m in mods:
        if m not in index:
            visit(m)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle_inside_the_package(package: str) -> None:
    assert circles(GRAPH, package) == []


def test_an_import_inside_a_function_is_in_the_graph() -> None:
    # binding imports the built-in models only inside `_model`.
    binding, builtins = "autotuner.runners.binding", "autotuner.models.builtins"
    assert GRAPH.direct_import_exists(importer=binding, imported=builtins)


def test_a_circle_through_a_function_body_is_found() -> None:
    graph = grimp.build_graph("autotuner")
    graph.add_import(importer="autotuner.runners.base", imported="autotuner.runners.registry")
    assert circles(graph, "autotuner.runners") != []
