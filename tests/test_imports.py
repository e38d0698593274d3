"""No import cycles among conformer_bench's modules, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "conformer_bench"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of the package that ``module`` imports anywhere in its file (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name`` imports mod.
                submodule = f"{source}.{alias.name}"
                out.add(submodule if submodule in known else source)
    return {name for name in out if name in known and name != module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_cycle_finder_sees_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    known = _module_names()
    graph = {name: _imported(name, path, known) for name, path in known.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_ablation_worker_and_launcher_are_apart() -> None:
    """The worker runs one cell knowing nothing of how it is launched or scheduled, and the other way round."""
    known = _module_names()
    graph = {name: _imported(name, path, known) for name, path in known.items()}
    worker, launch, runner = (f"{PACKAGE}.ablate.{m}" for m in ("worker", "launch", "runner"))
    assert not {launch, runner} & _reachable(graph, worker)
    assert not {worker, runner} & _reachable(graph, launch)


def test_the_ab_worker_stands_alone() -> None:
    """The A/B worker runs under another revision's code: it may import no module of this package (it would
    get that revision's), and nothing here imports it (it is started by path)."""
    known = _module_names()
    worker = f"{PACKAGE}.ab.worker"
    tree = ast.parse(known[worker].read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.startswith(PACKAGE) for name in imported), imported
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    graph = {name: _imported(name, path, known) for name, path in known.items()}
    assert not any(worker in targets for targets in graph.values())
