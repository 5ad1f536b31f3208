"""Imports go one way: trainer -> cxr_viewer.core <- cxr_viewer.qt.

Checked twice: an AST walk of every module (no imports executed, so lazy imports
inside functions count too), and import-linter's contracts from pyproject.toml.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cxr_viewer"

QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "PySide2", "shiboken6", "qtpy", "superqt", "cxr_viewer.qt")
TRAINER_MODULES = ("trainer", "lightning", "pytorch_lightning")


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False, *, reexports: bool = True) -> set[str]:
    """Absolute names of everything a module imports, wherever the import statement is.

    ``reexports=False`` leaves out a module-level ``__getattr__`` (PEP 562): the lazy re-export
    of names that moved elsewhere, which keeps old import paths working without a dependency.
    """
    tree = ast.parse(source)
    if not reexports:
        tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "__getattr__")]
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def violations(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def _modules() -> list[tuple[Path, str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, "no modules found"
    return [(f, module_name(f)) for f in files]


def test_checker_catches_forbidden_imports():
    src = "import os\nfrom PySide6.QtWidgets import QWidget\n\ndef f():\n    from ..qt import canvas\n    import lightning\n"
    names = imported_modules(src, "cxr_viewer.core.x")
    assert violations(names, QT_MODULES) == ["PySide6.QtWidgets", "PySide6.QtWidgets.QWidget", "cxr_viewer.qt",
                                             "cxr_viewer.qt.canvas"]
    assert violations(names, TRAINER_MODULES) == ["lightning"]
    assert violations(imported_modules("from . import session", "cxr_viewer.core.x"), QT_MODULES) == []


def test_core_imports_no_qt():
    bad = {}
    for path, mod in _modules():
        if not (mod == "cxr_viewer.core" or mod.startswith("cxr_viewer.core.")):
            continue
        names = imported_modules(path.read_text(encoding="utf-8"), mod, path.name == "__init__.py")
        found = violations(names, QT_MODULES + TRAINER_MODULES)
        if found:
            bad[mod] = found
    assert not bad, f"cxr_viewer.core must not import Qt or the trainer: {bad}"


def test_viewer_never_imports_trainer():
    bad = {}
    for path, mod in _modules():
        names = imported_modules(path.read_text(encoding="utf-8"), mod, path.name == "__init__.py")
        found = violations(names, TRAINER_MODULES)
        if found:
            bad[mod] = found
    assert not bad, f"cxr_viewer must not import trainer/lightning: {bad}"


def test_import_linter_contracts():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("import-linter is a dev dependency: pip install -e .[dev]")
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" not in proc.stdout.lower() or "0 broken" in proc.stdout.lower()
