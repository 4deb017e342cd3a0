"""The package's shape, read from its modules' import statements (function-level and TYPE_CHECKING ones too):
no import cycle, executors and pipelines independent of the engine, one executor seam for run and diff."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "streamfilter"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                found = resolve(target)
                # A module reaching into its own package (a sibling's name re-exported there), or a
                # package's __init__ importing its own submodules, is how packages are built, not a cycle.
                if (
                    found
                    and found != name
                    and found.startswith("streamfilter")
                    and not (name.startswith(found + ".") or found.startswith(name + "."))
                ):
                    edges.add(found)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    # A guard for the checks below: they would pass on an empty graph.
    assert "streamfilter.engine" in graph and "streamfilter.executors" in graph["streamfilter.engine"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_executors_and_pipelines_do_not_import_the_engine_or_the_diff(graph: dict[str, set[str]]) -> None:
    for name, edges in graph.items():
        if name.startswith(("streamfilter.executors", "streamfilter.pipelines")):
            assert not edges & {"streamfilter.engine", "streamfilter.diff.job"}, name
            assert not any(e.startswith("streamfilter.diff") for e in edges), name


def test_run_and_diff_share_the_executors(graph: dict[str, set[str]]) -> None:
    assert "streamfilter.executors" in graph["streamfilter.diff.job"]
    assert "streamfilter.executors" in graph["streamfilter.engine"]
    assert not any(name.startswith("streamfilter.diff.ray") for name in graph)
    assert "streamfilter.executors.ray" not in graph["streamfilter.diff.job"]  # only through the seam
