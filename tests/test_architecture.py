"""The house rules of docs/architecture.md, checked: imports only downward, small files and functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "diffex"
# Layers from the bottom up; a module may import from its own layer and the layers below it.
LAYERS = {"helpers": 0, "data": 1, "models": 2, "report": 3, "explain": 4, "top": 5}
HELPERS = {"errors", "config", "fsutil", "progress", "runtime"}
TOP = {"cli", "inspect", "workflow", "__init__", "__main__"}


def layer_of(module: str) -> str:
    """'diffex.models.sampler' -> 'models'; 'diffex.fsutil' -> 'helpers'; 'diffex.cli' -> 'top'."""
    parts = module.split(".")
    if len(parts) == 1:
        return "top"
    if parts[1] in LAYERS and parts[1] not in ("helpers", "top"):
        return parts[1]
    if parts[1] in HELPERS:
        return "helpers"
    if parts[1] in TOP:
        return "top"
    raise AssertionError(f"{module}: not in any layer of docs/architecture.md")


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1] if len(parts) > 2 else parts
    return ".".join(parts)


def diffex_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``diffex`` import in a file, including imports inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "diffex":
            base = node.module
            out += [(node.lineno, f"{base}.{a.name}" if base == "diffex" else base) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "diffex"]
    return out


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_only_downward(path):
    mine = LAYERS[layer_of(module_name(path))]
    bad = []
    for line, mod in diffex_imports(path):
        if mod.split(".")[1] in ("__version__",):
            continue
        theirs = LAYERS[layer_of(mod)]
        if theirs > mine:
            bad.append(f"line {line}: {mod} ({layer_of(mod)}) is above {layer_of(module_name(path))}")
    assert not bad, bad


def test_layer_rule_catches_an_upward_import(tmp_path):
    """The check itself: a data module importing from explain is reported."""
    f = tmp_path / "bad.py"
    f.write_text("from diffex.explain.rank import attfind\nimport diffex.models.sampler\n")
    mods = [m for _, m in diffex_imports(f)]
    assert mods == ["diffex.explain.rank", "diffex.models.sampler"]
    assert LAYERS[layer_of(mods[0])] > LAYERS["data"] and LAYERS[layer_of(mods[1])] > LAYERS["data"]


def test_files_and_functions_are_small():
    long_files, long_functions = [], []
    for p in SOURCES:
        src = p.read_text()
        if len(src.splitlines()) > 400:
            long_files.append(f"{p.relative_to(REPO)}: {len(src.splitlines())} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long_functions.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name}() {node.end_lineno - node.lineno + 1} lines")
    assert not long_files and not long_functions, long_files + long_functions
