"""The package's shape: no import cycle, small modules, one contract for every model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sidrec"
MAX_LINES = 420  # "a few hundred lines at most"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every sidrec module `path` imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # `from sidrec.models import tiger` imports the submodule sidrec.models.tiger
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle() -> None:
    edges = graph()
    # A package's __init__ re-exporting its own modules is not a dependency cycle.
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".")}
    assert cycles(edges) == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_modules_stay_small(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {n} lines; split it by concept"


def test_shared_modules_never_name_a_model() -> None:
    """The trainer, evaluator, bench, report and API loop over models through the registry:
    none of them may branch on a model's name."""
    names = ("tiger", "liger", "cobra", "sasrec", "dense", "pop")
    for module in ("train", "epoch", "evaluate", "bench", "bench_jobs", "report", "api",
                   "checkpoint", "presets"):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                for c in [node.left, *node.comparators]:
                    if isinstance(c, ast.Constant) and c.value in names:
                        pytest.fail(f"{module}.py compares with the model name {c.value!r}")


# The modules that read or write a run directory: a stage, or the names of its files.
STAGE_MODULES = ("sidrec.run", "sidrec.artifacts", "sidrec.data", "sidrec.embed",
                 "sidrec.tokenize.stage")


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through the modules it imports."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_reachable_follows_imports_through_other_modules() -> None:
    assert reachable({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, "a") == {"a", "b", "c"}


def test_models_never_import_a_stage_module() -> None:
    """A model is handed what it needs (arrays, paths, encoders) by its loader
    (`sidrec.catalogue.build`, `sidrec.checkpoint`): nothing in `sidrec.models` imports a
    stage or the run directory's layout, not even through another module."""
    edges = graph()
    for name in sorted(edges):
        if name == "sidrec.models" or name.startswith("sidrec.models."):
            staged = sorted(t for t in reachable(edges, name)
                            if any(t == s or t.startswith(s + ".") for s in STAGE_MODULES))
            assert not staged, f"{name} imports {', '.join(staged)}"


MAX_FUNCTION_LINES = 100  # a function a reader holds in their head
MAX_CLASS_LINES = 250
SERVICE_MAX_LINES = 300  # api.Service recommends; the live catalogue lives in sidrec.catalogue


def oversized(tree: ast.AST) -> list[str]:
    """Functions over MAX_FUNCTION_LINES and classes over MAX_CLASS_LINES in `tree`."""
    found = []
    for node in ast.walk(tree):
        limit = (MAX_FUNCTION_LINES if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                 else MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else None)
        if limit is not None and node.end_lineno - node.lineno + 1 > limit:
            found.append(f"{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return found


def test_oversized_finds_a_planted_long_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert oversized(ast.parse(f"def long():\n{body}\n")) == [
        f"long ({MAX_FUNCTION_LINES + 1} lines)"]
    assert oversized(ast.parse("class Small:\n    def f(self):\n        return 1\n")) == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_functions_and_classes_stay_small(path: Path) -> None:
    assert oversized(ast.parse(path.read_text())) == [], path


def test_the_service_module_stays_small() -> None:
    assert len((PACKAGE / "api.py").read_text().splitlines()) <= SERVICE_MAX_LINES
