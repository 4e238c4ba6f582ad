"""The import graph: no cycles, and dependencies run one way (core <- plug-ins <- orchestration).

Walks every module's imports with `ast` (no import side effects, no new dependency). Imports under
`if TYPE_CHECKING:` count too: a cycle there is still a knot a reader has to untie.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sam_brain", "backends", "collectors", "deployment", "teachers")
ORCHESTRATION = ("pipeline", "train", "control", "dev", "teach")
# Which layer may import which. The core (sam_brain's top-level modules) imports no plug-in and no
# orchestration; plug-ins import the core (and the pipeline's pure helpers); orchestration imports all.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "pipeline": {"core", "pipeline"},
    "backends": {"core", "backends"},
    "collectors": {"core", "pipeline", "collectors"},
    "deployment": {"core", "backends", "deployment"},
    "teachers": {"core", "teachers"},
    "train": {"core", "pipeline", "backends", "collectors", "deployment", "train"},
    "teach": {"core", "pipeline", "teachers", "deployment", "train", "teach"},
    "control": {
        "core",
        "pipeline",
        "train",
        "backends",
        "collectors",
        "deployment",
        "dev",
        "teachers",
        "teach",
        "control",
    },
    "dev": {
        "core",
        "pipeline",
        "train",
        "backends",
        "collectors",
        "deployment",
        "teachers",
        "teach",
        "dev",
    },
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if ".venv" not in p.parts
    }


def imported(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def import_graph() -> dict[str, set[str]]:
    mods = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set(imported(ast.parse(path.read_text(encoding="utf-8"))))
        # A package's own __init__ is not an edge worth tracking (it imports nothing here).
        graph[name] = {
            t for t in targets if t in mods and t != name and not name.startswith(t + ".")
        }
    return graph


def layer(module: str) -> str:
    head, _, rest = module.partition(".")
    if head == "sam_brain":
        sub = rest.partition(".")[0]
        return sub if sub in ORCHESTRATION else "core"
    return head


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative-safe for our size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_graph_is_found() -> None:
    graph = import_graph()
    # Guard against a walker that silently sees nothing.
    assert "sam_brain.config" in graph
    assert "sam_brain.errors" in graph["sam_brain.config_load"] or graph["sam_brain.config_load"]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_dependencies_run_one_way() -> None:
    bad = [
        f"{a} ({layer(a)}) imports {b} ({layer(b)})"
        for a, targets in import_graph().items()
        for b in sorted(targets)
        if layer(b) not in ALLOWED[layer(a)]
    ]
    assert bad == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
