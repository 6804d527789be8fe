"""The package's shape: module and function sizes, no import cycles, a light worker side.

These are the targets the code is kept to (counted in source lines, docstrings
included): a module small enough to read whole, a function small enough to hold in
one's head, modules layered so that each can be read and tested from the bottom up,
and a worker that imports only what computing a block needs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "daskbatch"
MODULES = {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 100


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))


def _imported(nodes) -> set[str]:
    """The package's modules that these nodes import (relative or absolute)."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and module:
                found.add(module.split(".")[0])
            elif node.level == 1 or module == "daskbatch":
                found.update(a.name for a in node.names)
            elif module.startswith("daskbatch."):
                found.add(module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("daskbatch."))
    return found & set(MODULES)


def _graph(*, deferred: bool) -> dict[str, set[str]]:
    """Module -> the modules it imports: at module level only, or anywhere (deferred
    imports inside functions too)."""
    graph = {}
    for name in MODULES:
        tree = _tree(name)
        nodes = ast.walk(tree) if deferred else tree.body
        graph[name] = _imported(nodes) - {name, "__init__", "__main__"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_is_over_700_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > MAX_MODULE_LINES} == {}


def test_no_function_is_over_100_lines():
    long = {}
    for name in MODULES:
        for node in ast.walk(_tree(name)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{name}.{node.name}"] = lines
    assert long == {}


@pytest.mark.parametrize("deferred", [False, True], ids=["module-level", "deferred-too"])
def test_no_import_cycle_between_the_package_modules(deferred):
    assert _cycles(_graph(deferred=deferred)) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_a_worker_imports_no_cli_analysis_or_report_code():
    """What a worker imports to run a block (the block task and what it imports at
    module level) leaves out the command line, the analysis and the reports."""
    graph = _graph(deferred=False)
    reached, todo = set(), ["blocktask"]
    while todo:
        for module in graph[todo.pop()] - reached:
            reached.add(module)
            todo.append(module)
    heavy = {m for m in MODULES if m.startswith(("cli", "analysis", "report", "summary", "compare"))}
    assert heavy and not reached & heavy, reached & heavy
