"""The package's shape: no import circles among its modules, the folder format naming no model
class, the version in a leaf module."""

from __future__ import annotations

import ast
from pathlib import Path

import anyformer
import anyformer.serialization as serialization

PACKAGE = Path(anyformer.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The anyformer modules an import statement loads (a package stands for its __init__)."""
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        return {b for b in bases if b in known}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1])
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    submodules = {f"{base}.{alias.name}" for alias in node.names} & known
    if base in known and len(submodules) < len(node.names):  # names defined by `base` itself
        submodules.add(base)
    return submodules


def import_graph() -> dict[str, set[str]]:
    """module -> the anyformer modules it imports anywhere: at module level, under
    ``if TYPE_CHECKING:`` and inside functions (lazy loads count too: a lazy import that closes
    a circle only hides it). Importing ``a.b.c`` also runs the packages ``a`` and ``a.b``
    first; those implicit edges are left out (every package re-exporting its children would
    otherwise be a circle)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _targets(name, path, node, known)
        graph[name] = edges - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def test_cycle_finder_finds_a_known_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_import_graph_reads_relative_imports() -> None:
    graph = import_graph()
    assert "anyformer.cache" in graph["anyformer.stack.layers"]  # from ..cache import KVCache
    assert "anyformer.wrappers.transformer" in graph["anyformer.wrappers"]  # from .transformer
    assert "anyformer.convert.hf_bert" in graph["anyformer.convert.hf"]  # lazy, in a function
    assert "anyformer.convert" not in graph["anyformer.convert.hf"]  # `from . import hf_bert`


def test_no_import_cycles() -> None:
    """No circle among anyformer's modules, counting every import (see import_graph)."""
    cycles = find_cycles(import_graph())
    assert cycles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_serialization_and_configuration_import_no_model_module() -> None:
    graph = import_graph()
    models = ("anyformer.wrappers", "anyformer.generation", "anyformer.stack", "anyformer.nn")
    reached = graph["anyformer.serialization"]
    assert "anyformer._version" in reached and "anyformer" not in reached
    assert not [m for m in reached if m.startswith(models)], reached
    assert graph["anyformer._version"] == set()
    assert graph["anyformer.config.later"] == {"anyformer._version"}
    tree = ast.parse((PACKAGE / "serialization.py").read_text(encoding="utf-8"))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    for model in ("TransformerWrapper", "XTransformer", "AutoregressiveWrapper", "wrappers"):
        assert model not in names and model not in strings
    # the classes registered themselves where they are defined
    assert {
        "ContinuousTransformerWrapper",
        "TransformerWrapper",
        "ViTransformerWrapper",
        "XTransformer",
    } <= set(serialization.MODEL_CLASSES)
    assert serialization.WRAPPER_CLASSES["AutoregressiveWrapper"] == (
        anyformer.AutoregressiveWrapper,
        ("ignore_index", "pad_value"),
    )
