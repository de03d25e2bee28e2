"""The package's layering stays visible: no import cycle between the top-level packages and modules
of pytest_replay (every import counted, function-local ones included), and the sans-IO layers do
not import pytest or asyncio (docs/architecture.md)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest_replay

PACKAGE = Path(pytest_replay.__file__).parent
SANS_IO = ("capture", "reassembly", "http")  # no pytest, no asyncio, no sockets


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]  # `from . import x`: x may be a module
    return found


def _unit(module: str) -> str | None:
    """pytest_replay.capture.gor -> capture; pytest_replay.plugin -> plugin; others -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pytest_replay" and len(parts) > 1 else None


def dependency_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(_module_name(path))
        for imported in _imports(path):
            other = _unit(imported)
            if unit and other and other != unit and (PACKAGE / other).exists() | (PACKAGE / f"{other}.py").exists():
                graph[unit].add(other)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_top_level_packages() -> None:
    graph = dependency_graph()
    assert graph["session"] and graph["capture"], "the walk found the package's imports"
    found = cycles(graph)
    edges = {tuple(c): sorted(f"{a} -> {b}" for a in c for b in graph[a] if b in c) for c in found}
    assert not found, f"import cycles between packages: {edges}"


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_sans_io_layers_import_neither_pytest_nor_asyncio() -> None:
    offenders = []
    for layer in SANS_IO:
        for path in (PACKAGE / layer).rglob("*.py"):
            bad = {m for m in _imports(path) if m.split(".")[0] in ("pytest", "_pytest", "asyncio")}
            if bad:
                offenders.append(f"{path.relative_to(PACKAGE)}: {sorted(bad)}")
    assert not offenders
