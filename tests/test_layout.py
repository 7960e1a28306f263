"""The import graph keeps the layers: specvlm <- drafters <- training <- eval <- growmaps, and no file circles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: each package may import only the packages before it (and itself)
LAYERS = ("specvlm", "drafters", "training", "eval", "growmaps")
#: the one lazy way from the engine into the draft sources
LAZY_ENTRY = ("specvlm.api", "drafters.build")


def modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for file in sorted((ROOT / package).rglob("*.py")):
            parts = file.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = file
    return out


MODULES = modules()


def _known(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported project module, at import time) for every import in `module`; `if TYPE_CHECKING:` blocks skipped."""
    file = MODULES[module]
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]

    def visit(body: list[ast.stmt], top: bool) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in targets(node):
                    known = _known(name)
                    if known is not None and known != module:
                        found.append((known, top))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse, top)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(node.body, False)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, None) or [], top)

    visit(ast.parse(file.read_text()).body, True)
    return found


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{module} -> {target}" + ("" if top else " (lazy)")
        for module in MODULES
        for target, top in imports(module)
        if layer(target) > layer(module) and not ((module, target) == LAZY_ENTRY and not top)
    ]
    assert upward == []


def test_the_engine_reaches_the_drafters_once_lazily() -> None:
    entries = [(m, t, top) for m in MODULES if m.startswith("specvlm") for t, top in imports(m) if layer(t) > 0]
    assert entries == [(*LAZY_ENTRY, False)]


def test_no_import_circles_between_files() -> None:
    graph = {m: {t for t, _ in imports(m)} for m in MODULES}
    circles = []
    for start in graph:  # a path from a module back to itself
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join((*path, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*path, nxt)))
    assert circles == []


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an upward and a lazy import are both found."""
    MODULES["specvlm._probe"] = tmp_path / "probe.py"
    (tmp_path / "probe.py").write_text("import eval.common\n\n\ndef f():\n    from drafters import ngram\n")
    try:
        assert imports("specvlm._probe") == [("eval.common", True), ("drafters.ngram", False)]
    finally:
        del MODULES["specvlm._probe"]


@pytest.mark.parametrize(
    "module", ["specvlm.draft_spec", "specvlm.errors", "specvlm.tree_kinds", "eval.args", "eval.results", "eval.common"]
)
def test_cli_helpers_import_without_torch(module: str) -> None:
    assert module in MODULES
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
