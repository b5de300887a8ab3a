"""The layout the packages keep: each talks to another through its public ``__init__`` only,
every ``__all__`` is complete, and no file points outside the repository."""

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
    """Every name a package's __init__ imports is in its __all__, and every name in each
    module's __all__ exists."""
    init = importlib.import_module(package)
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    imported = {alias.asname or alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert sorted(imported - set(init.__all__)) == []
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
