"""The layers of docs/ARCHITECTURE.md hold: no import goes upward (import-linter, whose
contracts live in pyproject.toml, sees function-local imports too)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
        "sys.exit(c(args=sys.argv[1:]))", "--no-cache"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"Contracts: (\d+) kept, 0 broken", out.stdout)


def test_an_upward_import_breaks_the_contract(tmp_path):
    """A function-local import from the bottom layer (models) up to the tiny zoo fails."""
    shutil.copytree(REPO / "qvq_tune", tmp_path / "qvq_tune",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    detect = tmp_path / "qvq_tune" / "models" / "detect.py"
    detect.write_text(detect.read_text() + "\n\ndef _sneaky():\n    from ..tiny import zoo\n    return zoo\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "qvq_tune.models.detect -> qvq_tune.tiny.zoo" in out.stdout, out.stdout
