"""The package's layers, read from the code's own imports: a lower layer never imports a higher one, packages of one
layer do not import each other, and no modules import each other in a circle (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autotune"

# Bottom to top. The root modules (task, params, guidance, errors, pareto...) are the shared vocabulary.
LAYERS: list[set[str]] = [
    {"<root>"},
    {"shapes"},
    {"tasks"},
    {"scoring", "presets"},
    {"engine"},
    {"evaluation"},
    {"tuning"},
    {"report", "bench"},
    {"cli"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every autotune module a file imports, at the top or inside a function, with the line."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("autotune"):
                out.append((node.lineno, str(node.args[0].value)))  # importlib.import_module("autotune....")
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "autotune"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "autotune":
                continue
            modules = _modules()
            for alias in node.names:  # `from autotune.x import y`: y may be a module itself
                full = f"{node.module}.{alias.name}"
                out.append((node.lineno, full if full in modules else node.module))
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "<root>"
    top = parts[1]
    return top if (PACKAGE / top).is_dir() else "<root>"


def _layer(module: str) -> int:
    package = _package(module)
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS; add its package there (and to docs/architecture.md)")


def test_every_package_has_a_layer():
    for module in _modules():
        _layer(module)


def _wrong_imports(module: str, imports: list[tuple[int, str]]) -> list[str]:
    mine, layer = _package(module), _layer(module)
    wrong = []
    for line, target in imports:
        if target == "autotune":  # `from autotune import __version__`
            continue
        other, other_layer = _package(target), _layer(target)
        if other_layer > layer or (other_layer == layer and other != mine):
            wrong.append(f"line {line}: {target} ({other}, layer {other_layer})")
    return wrong


@pytest.mark.parametrize("module", sorted(_modules()))
def test_a_module_imports_only_from_below_or_from_its_own_package(module):
    if module == "autotune":
        pytest.skip("the package root names its public API lazily, by string, and imports only the vocabulary")
    wrong = _wrong_imports(module, _imports(_modules()[module]))
    assert not wrong, f"{module} ({_package(module)}, layer {_layer(module)}) imports from above or beside it: {wrong}"


def test_the_layer_rule_can_fail():
    """Upward and sideways imports are caught; downward and in-package ones pass."""
    assert _wrong_imports("autotune.engine.editor", [(3, "autotune.tuning.tuner")])  # up
    assert _wrong_imports("autotune.scoring.base", [(3, "autotune.presets.preset")])  # beside
    assert not _wrong_imports("autotune.tuning.tuner", [(3, "autotune.engine.editor"), (4, "autotune.pareto"),
                                                        (5, "autotune.tuning.contract")])


def test_no_import_circle():
    graph = {m: {t for _, t in _imports(p) if t != m} for m, p in _modules().items()}
    # A package's __init__ importing its own modules is how a package names its API, not a circle of design.
    for module in graph:
        graph[module] = {t for t in graph[module] if not (module in graph and t.startswith(module + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            circle = visit(module)
            assert circle is None, f"import circle: {' -> '.join(circle)}"
