"""Layering: science (preproc, analysis, learn, sim) below the nipype glue, the derivatives
writer at the bottom; no import runs from a lower layer to a higher one, and no modules
import each other (a cycle), inside a layer either."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dpnbids"

#: lowest first; a module may import only from its own layer or below
LAYERS = (
    ("dpnbids", "dpnbids.messages", "dpnbids.exceptions", "dpnbids.nifti_io",
     "dpnbids.derivatives", "dpnbids.publish", "dpnbids.templates", "dpnbids.bids", "dpnbids.config"),
    ("dpnbids.preproc", "dpnbids.analysis", "dpnbids.learn", "dpnbids.sim"),
    ("dpnbids.interfaces", "dpnbids.reports"),
    ("dpnbids.workflows",),
    ("dpnbids.group",),
    ("dpnbids.cli",),
)


def layer_of(module: str) -> int:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for p in prefixes:
            inside = module == p or (p != "dpnbids" and module.startswith(p + "."))
            if inside and (best is None or len(p) > best[1]):
                best = (level, len(p))
    if best is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS")
    return best[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def dpnbids_imports(path: Path):
    """Every ``dpnbids...`` module imported anywhere in the file (also inside functions)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "dpnbids")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "dpnbids":
            if node.module == "dpnbids":  # from dpnbids import x: x may be a module
                for a in node.names:
                    sub = f"dpnbids.{a.name}"
                    yield sub if (PACKAGE / a.name).exists() or \
                        (PACKAGE / f"{a.name}.py").exists() else "dpnbids"
            else:
                yield node.module
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; write dpnbids.... in full")


def test_no_import_runs_upward():
    upward = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    for path in files:
        mod = module_name(path)
        for target in dpnbids_imports(path):
            if layer_of(target) > layer_of(mod):
                upward.append(f"{mod} (layer {layer_of(mod)}) imports {target} "
                              f"(layer {layer_of(target)})")
    assert not upward, "\n".join(upward)


def import_graph() -> dict:
    """Module -> the dpnbids modules it imports anywhere in its file (itself left out)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        graph[mod] = sorted({t for t in dpnbids_imports(path) if t != mod})
    return graph


def find_cycle(graph: dict) -> list | None:
    """One import cycle of ``graph`` (module -> imported modules) as [a, b, ..., a], or None.

    Depth-first search in sorted order, so the cycle reported is the same on every run."""
    state = {}  # absent: unvisited; 1: on the current path; 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    """No two modules import each other, directly or through others, even inside a layer
    and even from inside a function."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_catches_a_planted_cycle():
    acyclic = {"a": ["b", "c"], "b": ["c"], "c": [], "d": ["a"]}
    assert find_cycle(acyclic) is None
    assert find_cycle({**acyclic, "c": ["d"]}) == ["a", "b", "c", "d", "a"]
    assert find_cycle({"x": ["y"], "y": ["x"]}) == ["x", "y", "x"]
    assert find_cycle({"x": ["x"]}) == ["x", "x"]


def test_layer_table_catches_an_upward_import():
    assert layer_of("dpnbids.analysis.ica") < layer_of("dpnbids.workflows.group")
    assert layer_of("dpnbids.derivatives") == 0
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("dpnbids.nowhere")


def test_science_imports_without_nipype():
    """The maths can be used (and tested) without the workflow engine."""
    mods = sorted(module_name(p) for sub in ("analysis", "learn", "preproc")
                  for p in (PACKAGE / sub).glob("*.py"))
    assert "dpnbids.analysis.ica" in mods and "dpnbids.learn.cv" in mods
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(k for k in sys.modules if k == 'nipype' or k.startswith('nipype.'))\n"
            "print(len(bad))\n"
            "assert not bad, bad[:5]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0"


def _code_lines(node) -> int:
    """Lines of a function without its docstring."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_size_limits():
    """No module over 600 lines; no function with over 80 lines of code (its docstring, which
    documents every parameter of the long public functions, is not counted)."""
    too_long, too_big = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 600:
            too_big.append(f"{path.relative_to(PACKAGE)} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and _code_lines(node) > 80:
                too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} "
                                f"({_code_lines(node)} lines of code)")
    assert not too_big, f"modules over 600 lines: {too_big}"
    assert not too_long, f"functions over 80 lines of code: {too_long}"
