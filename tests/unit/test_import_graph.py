"""kdkit's packages form a DAG: the import graph, read from the source (the ``ast`` of every module, imports
inside functions and under ``if TYPE_CHECKING`` included), has no cycle between subpackages or top-level
modules; no module imports kdkit's root package; and a function-level import is only for a heavy optional
dependency, with a comment saying why. Also: no module outside ``methods/`` and ReAugKD's ``retrieval/``
names a method."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "kdkit"
# imports allowed inside functions: heavy or optional, and only needed by one command
LAZY_OK = {"datasets", "matplotlib", "nltk", "torch.utils.tensorboard", "uvicorn"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str | None:
    """The graph node of a kdkit module: its subpackage or top-level module (``kdkit.data.lm`` -> ``data``)."""
    parts = module.split(".")
    if parts[0] != "kdkit":
        return None
    return parts[1] if len(parts) > 1 else "kdkit"


def _imports(path: Path) -> list[tuple[ast.stmt, str, bool]]:
    """(node, imported module, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    inner: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, id(node) in inner) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                base = package[: len(package) - node.level + (1 if path.name == "__init__.py" else 0)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == "kdkit":  # `from kdkit import x`: x may be a submodule
                found += [(node, f"kdkit.{alias.name}", id(node) in inner) for alias in node.names]
            else:
                found.append((node, target, id(node) in inner))
    return found


def import_graph() -> dict[str, set[str]]:
    """Edges between kdkit's subpackages and top-level modules (the root package's own imports excluded)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        source = _unit(_module_name(path))
        assert source is not None
        if source == "kdkit":  # the public API re-exports everything; nothing may import it back
            continue
        for _, target, _ in _imports(path):
            unit = _unit(target)
            if unit is not None and unit != source:
                graph.setdefault(source, set()).add(unit)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_packages_form_a_dag() -> None:
    graph = import_graph()
    assert {"data", "models", "methods", "train", "family", "retrieval", "teacher"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle between kdkit packages: {' -> '.join(cycle)}"
    assert "losses" not in graph, f"losses/ is pure math and imports nothing of kdkit: {graph.get('losses')}"


def test_nothing_imports_the_root_package() -> None:
    for path in SRC.rglob("*.py"):
        if path.parent == SRC and path.name == "__init__.py":
            continue
        for node, target, _ in _imports(path):
            assert target != "kdkit", f"{path}:{node.lineno} imports kdkit's root package (a cycle)"


def test_function_level_imports_are_only_for_heavy_optional_dependencies() -> None:
    for path in SRC.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node, target, inside in _imports(path):
            if not inside:
                continue
            where = f"{path.relative_to(SRC)}:{node.lineno} imports {target} inside a function"
            assert any(target == ok or target.startswith(ok + ".") for ok in LAZY_OK), where
            around = " ".join(lines[max(0, node.lineno - 3) : node.lineno])
            assert "#" in around, f"{where} without a comment saying why"


def test_no_module_outside_the_methods_names_a_method() -> None:
    """Methods are named in methods/ and in ReAugKD's own package, retrieval/; elsewhere only docs may."""
    pattern = re.compile(r'reaugkd|mixkd|"kb"|augment_')
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(("methods/", "retrieval/")):
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert not pattern.search(line), f"{rel}:{number} names a method: {line.strip()}"
