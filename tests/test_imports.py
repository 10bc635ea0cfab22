"""The shape of the imports (docs/architecture.md, "Layers"): no pipeline package imports another, and no two
modules import each other, counting imports made only for type hints (under TYPE_CHECKING) or inside functions.
Read from the source with `ast`: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "synthdp"
PIPELINES = sorted(p.name for p in (PACKAGE / "pipelines").iterdir() if (p / "__init__.py").is_file())
# The package's own `__init__` re-exports the entry points, which import their submodules of it: not a circle.
ALLOWED = {frozenset({"synthdp", "synthdp.run"})}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path) -> set[str]:
    """Every synthdp module `path` imports, wherever the import stands (top level, TYPE_CHECKING, a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from synthdp import run` imports the module synthdp.run; `from synthdp.run import x`, synthdp.run
            subs = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES]
            names = subs if len(subs) == len(node.names) else [node.module, *subs]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES}
    return found - {module_name(path)}


GRAPH = {name: imported(path) for name, path in MODULES.items()}


def test_the_pipelines_are_found() -> None:
    assert {"private_prediction", "invisibleink", "private_evolution", "finetune"} <= set(PIPELINES)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_no_pipeline_package_imports_another(pipeline: str) -> None:
    """What two pipelines share lives beside them in synthdp/pipelines/ (batching.py, prompting.py, ...)."""
    own = f"synthdp.pipelines.{pipeline}"
    others = tuple(f"synthdp.pipelines.{p}" for p in PIPELINES if p != pipeline)
    wrong = sorted(f"{name} imports {target}" for name in GRAPH if name == own or name.startswith(own + ".")
                   for target in GRAPH[name] if target.startswith(others))
    assert not wrong, wrong


def test_no_two_modules_import_each_other() -> None:
    """A circle is found even when one side imports only for type hints: such an import is a layer pointing up."""
    circles = sorted(f"{a} <-> {b}" for a in GRAPH for b in GRAPH[a]
                     if a < b and a in GRAPH.get(b, set()) and frozenset({a, b}) not in ALLOWED)
    assert not circles, circles
