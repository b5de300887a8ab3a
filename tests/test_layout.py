"""The layout the packages keep: each talks to another through its public ``__init__`` only,
every ``__all__`` is complete, tables are built in analysis alone, no private name of Ray or
Optuna is used, test hooks stay out of the product, and no file points outside the
repository."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainable", "search", "analysis")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).glob("*.py"))


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_use_each_others_public_api_only(package):
    crossings = [f"{path.relative_to(ROOT)} imports {name}"
                 for path in _modules(package) for name in _imports(path)
                 if name.split(".")[0] in PACKAGES and name.split(".")[0] != package
                 and any(part.startswith("_") for part in name.split(".")[1:])]
    assert crossings == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_all_is_complete(package):
    """Every name a package's __init__.pyi lists (what it loads on first use) is in its
    __all__ and loads, and every name in each module's __all__ exists."""
    init = importlib.import_module(package)
    tree = ast.parse((ROOT / package / "__init__.pyi").read_text())
    imported = {alias.asname or alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert sorted(imported ^ set(init.__all__)) == []
    assert all(hasattr(init, name) for name in init.__all__)
    for path in _modules(package):
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"{package}.{path.stem}")
        missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
        assert missing == [], path.name


def test_no_file_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    # built from pieces, so that this line does not match itself
    outside = re.compile("|".join((r"\.\./" + "shared", "/work/" + "shared", "design" + r"\.md")))
    hits = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in (".py", ".md", ".yaml", ".toml", ".txt", ".cfg") or \
                name in ("Makefile", ".ci/run"):
            hits += [f"{name}: {line.strip()}" for line in path.read_text().splitlines()
                     if outside.search(line)]
    assert hits == []


def _product_modules() -> list[Path]:
    return [path for package in PACKAGES for path in _modules(package)]


def test_tables_are_built_in_analysis_only():
    """Rows are computed once (analysis._tables) and drawn by its views: no other module
    builds a rich, HTML or Markdown table."""
    builders = []
    for path in _product_modules():
        if path.parent.name == "analysis":
            continue
        text = path.read_text()
        builders += [f"{path.relative_to(ROOT)}: {needle}" for needle in
                     ("rich.table", "<table", "|---") if needle in text]
    assert builders == []


_FOREIGN = ("ray", "optuna", "pyautoattack")


def test_no_private_name_of_ray_optuna_or_autoattack_outside_one_place():
    """Private modules (a name part starting with _) of Ray, Optuna and pyautoattack are never
    imported, and their objects' private attributes never read, except where clustune patches
    AutoAttack (analysis/_autoattack.py, which its tests pin against pyautoattack's own
    results). Ray Tune's files are read in analysis/_tune_layout.py."""
    allowed = {ROOT / "analysis" / "_autoattack.py"}
    found = []
    for path in _product_modules():
        if path in allowed:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                parts = node.module.split(".")
                if parts[0] in _FOREIGN and any(p.startswith("_") for p in parts[1:]):
                    found.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
                    not node.attr.startswith("__") and not (
                        isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert found == []


def test_test_hooks_stay_out_of_the_product():
    """The testing modules (fault injection, hand-written experiments) are shipped for tests;
    no product module imports them, and no config field exists only to inject faults."""
    uses = [f"{path.relative_to(ROOT)}: {name}" for path in _product_modules()
            if path.name != "testing.py" for name in _imports(path) + _relative_imports(path)
            if name.split(".")[-1] == "testing"]
    assert uses == []
    from trainable import TrainConfig

    assert not [name for name in TrainConfig.model_fields if "fail" in name or "fault" in name]


def _relative_imports(path: Path) -> list[str]:
    return [node.module or "" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.level]
