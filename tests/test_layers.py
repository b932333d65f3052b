"""The tree's import rules (ARCHITECTURE.md): layers import downwards only, and no module cycle.

model <- engine <- controls <- io <- apps inside instrument/; instrument/ never imports training/ or evaluation/;
evaluation/ sits on top of training/. Read from the source with ast (imports inside functions count too), so a
lazy import cannot hide a wrong direction.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("instrument", "training", "evaluation")

# For each room, the rooms it must not import (dotted prefixes).
FORBIDDEN = {
    "instrument": ("training", "evaluation"),
    "instrument.model": ("instrument.engine", "instrument.controls", "instrument.io", "instrument.apps"),
    "instrument.engine": ("instrument.controls", "instrument.io", "instrument.apps"),
    "instrument.controls": ("instrument.io", "instrument.apps"),
    "instrument.io": ("instrument.apps",),
    "training": ("evaluation",),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Dotted names of the sdga modules this file imports (absolute or relative, at any depth)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PACKAGES}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    out = {}
    for p in files:
        # keep only names that are modules (drop `from x import function`)
        out[_module_name(p)] = {m for m in _imports(p) if m in modules and m != _module_name(p)}
    return out


def test_graph_sees_the_tree(graph):
    assert "instrument.engine.engine" in graph and "instrument.model.dsp" in graph["instrument.engine.engine"]
    assert len(graph) > 40


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_import_downwards_only(graph, room):
    wrong = sorted(f"{m} -> {dep}" for m, deps in graph.items() if m == room or m.startswith(room + ".")
                   for dep in deps if any(dep == f or dep.startswith(f + ".") for f in FORBIDDEN[room]))
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycle(graph):
    """Tarjan's strongly connected components over module -> module imports (packages' __init__ excluded:
    importing a submodule does not import its siblings)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
