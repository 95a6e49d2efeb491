"""No import cycles in the project, hidden or not: every `import` in server/, bench/ and tools/, at any
depth (inside functions and `TYPE_CHECKING` blocks too), is an edge of one graph, which must have
no cycle. A cycle means two modules that cannot be read (or changed) one without the other."""

from __future__ import annotations

import ast
from pathlib import Path

from tools.local_server import ROOT

PACKAGES = ("server", "bench", "tools")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, here: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules a module's import statements name (any depth)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                package = here.split(".") if is_package else here.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:  # `from pkg import module` or `from module import name`
                name = name.rpartition(".")[0]
            if name and name != here:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    known = set(files)
    return {name: imported(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
            for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def test_the_project_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "server.engine.engine" in graph and "server.engine.runner" in graph["server.engine.engine"]
    assert cycles(graph) == []


def test_the_walk_sees_imports_inside_functions() -> None:
    """The checker itself: a cycle through a function-level import is found."""
    source = {"a": "def f():\n    from b import g\n", "b": "import a\n"}
    graph = {name: imported(ast.parse(text), name, False, set(source)) for name, text in source.items()}
    assert graph == {"a": {"b"}, "b": {"a"}}
    assert cycles(graph) == [["a", "b"]]


def test_the_api_layers() -> None:
    """`server/api/common/` imports no dialect, and no dialect imports another; what gathers them
    (the OpenAPI document, the route registration) sits above them."""
    graph = import_graph()
    dialects = ("kaito", "openai", "tgi", "mosaic")

    def package(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 3 and parts[:2] == ["server", "api"] else None

    for module, targets in graph.items():
        here = package(module)
        if here is None:
            continue
        crossed = {t for t in targets if package(t) in dialects and package(t) != here}
        assert not crossed, f"{module} imports {sorted(crossed)}"
    assert {m for m in graph if package(m) == "common"} >= {"server.api.common.dialect",
                                                            "server.api.common.engine_calls"}
