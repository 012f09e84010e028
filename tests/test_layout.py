"""The package's architecture, checked: each layer imports only from the layers beneath it, no
module imports itself back through others (a circle, deferred or not), no module grows past
~400 lines and the ``Unlearner`` class stays a thin driver."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "safemax"
# bottom to top; a module may import its own layer and any layer before it
LAYERS = ["errors", "settings", "op", "data", "models", "methods", "evaluation", "training", "zoo", "concepts",
          "harness", "cli",
          "integrations"]
TOP = {"safemax", "safemax.__main__", "safemax._moved"}   # the package's face: may import any layer
MAX_LINES = 400


def modules() -> dict:
    """``{dotted name: path}`` of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set) -> set:
    """The package's modules ``name`` imports, at module level or inside functions."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            # the longest known module the target names (``safemax.models.families.class_count`` → the module)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def layer(name: str):
    if name in TOP:
        return None
    return LAYERS.index(name.split(".")[1])


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_belongs_to_a_layer():
    for name in modules():
        assert name in TOP or name.split(".")[1] in LAYERS, f"{name}: put it in one of the layers {LAYERS}"


def test_no_layer_imports_a_layer_above_it(graph):
    upward = [f"{a} (layer {LAYERS[layer(a)]}) imports {b} (layer {LAYERS[layer(b)]})"
              for a, targets in graph.items() for b in targets
              if layer(a) is not None and b not in TOP and layer(b) > layer(a)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_circle(graph):
    # a package importing its own submodules (to re-export them) is not a circle; a submodule
    # importing a sibling through the package is resolved to the sibling by ``imports``
    edges = {a: {b for b in bs if not a.startswith(b + ".") and not b.startswith(a + ".")} | set()
             for a, bs in graph.items()}
    state, stack, circles = {}, [], []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == "open":
                circles.append(" → ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(edges):
        if n not in state:
            visit(n)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by what they do): {long}"


def test_the_unlearner_class_is_a_thin_driver():
    path = PACKAGE / "training" / "unlearner.py"
    cls = next(n for n in ast.parse(path.read_text(encoding="utf-8")).body
               if isinstance(n, ast.ClassDef) and n.name == "Unlearner")
    assert cls.end_lineno - cls.lineno + 1 <= 250


def test_the_old_flat_names_still_import_with_a_warning():
    import importlib
    import sys

    from safemax import _moved
    for old, new in _moved.MOVED.items():
        sys.modules.pop(f"safemax.{old}", None)
        with pytest.warns(DeprecationWarning, match=f"safemax.{old} moved to {new}"):
            module = importlib.import_module(f"safemax.{old}")
        assert module is importlib.import_module(new)
