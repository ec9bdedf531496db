"""A plain (non-editable) install, run from outside the checkout, finds its presets and recipes.

The project is built into a wheel and installed into a fresh virtual environment; the
heavy dependencies (torch, transformers, ...) are borrowed from the environment running
the tests through a `.pth` path entry rather than downloaded again. The installed copy
must import from the fresh environment, not from this checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import REPO


def _run(cmd, cwd, **kw):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    source = root / "source"        # a clean copy: no build/ or egg-info left over in the checkout
    shutil.copytree(REPO / "qvq_tune", source / "qvq_tune", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(root / "wheel"), str(source)], cwd=root)
    wheel = next((root / "wheel").glob("qvq_tune-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    (site / "_borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)], cwd=root)
    return venv


@pytest.mark.slow
def test_installed_copy_runs_from_outside_the_checkout(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python, cli = installed / "bin" / "python", installed / "bin" / "qvq-tune"
    where = _run([str(python), "-c", "import qvq_tune; print(qvq_tune.__file__)"], cwd=elsewhere).stdout
    assert where.startswith(str(installed)), f"imported from {where}, not the fresh install"

    assert "train" in _run([str(cli), "--help"], cwd=elsewhere).stdout
    shutil.copytree(REPO / "data_templates", elsewhere / "templates")
    _run([str(cli), "data", "build", "--input", "templates/native.jsonl", "--model", "qwen2_vl", "--out", "built",
          "--workers", "1"], cwd=elsewhere)
    checked = json.loads(_run([str(cli), "train", "--recipe", "demo_qlora_zero3", "--check",
                               "--set", "data.train=built"], cwd=elsewhere).stdout)
    assert checked["launch"]["accelerate_config"] == "zero3_shard_all"

    script = ("import json; from qvq_tune import presets; from qvq_tune.train.launch import "
              "write_resolved_config; from pathlib import Path; import tempfile; d = Path(tempfile.mkdtemp()); "
              "names = presets.names(presets.ACCELERATE); "
              "[write_resolved_config(n, 2, d / (n + '.yaml')) for n in names]; "
              "print(json.dumps({'presets': names, 'recipes': presets.names(presets.RECIPES)}))")
    found = json.loads(_run([str(python), "-c", script], cwd=elsewhere).stdout)
    assert set(found["presets"]) >= {"single", "ddp", "zero2", "zero3", "zero3_offload", "zero3_shard_all"}
    assert found["recipes"] == sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
