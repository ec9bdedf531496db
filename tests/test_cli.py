"""The `qvq-tune` command: help for every sub-command, one-line errors, non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qvq_tune.cli.main import SUBCOMMANDS, main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qvq_tune", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_top_level_help_lists_every_subcommand_with_a_description():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        line = next((l for l in out.stdout.splitlines() if l.strip().startswith(name + " ")), None)
        assert line and len(line.split()) > 3, f"{name} has no one-line description"


@pytest.mark.parametrize("argv", [[n, "--help"] for n in SUBCOMMANDS] +
                         [["models", "detect", "--help"], ["zoo", "build", "--help"], ["data", "build", "--help"],
                          ["eval", "score", "--help"], ["eval", "compare", "--help"],
                          ["data", "pairs", "--help"]])
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage: qvq-tune" in capsys.readouterr().out


@pytest.mark.parametrize("setup,needle", [
    ("missing", "does not exist"),
    ("corrupt", "config.json:1: config.json is not valid JSON"),
    ("unsupported", "unsupported architecture 'llama'"),
])
def test_models_detect_errors_are_one_line(setup, needle, tmp_path):
    folder = tmp_path / "m"
    if setup != "missing":
        folder.mkdir()
        (folder / "config.json").write_text("{oops" if setup == "corrupt" else json.dumps({"model_type": "llama"}))
    out = run_cli("models", "detect", str(folder))
    assert out.returncode == 1
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    assert needle in lines[0] and str(folder) in lines[0] and "Traceback" not in out.stderr


def test_models_detect_prints_family_json(tiny_model):
    out = run_cli("models", "detect", str(tiny_model("qwen3_vl")))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["family"] == "qwen3_vl" and info["model_class"] == "Qwen3VLForConditionalGeneration"


def test_zoo_build_cli_then_detect(tmp_path):
    out = run_cli("zoo", "build", "qwen2_5_vl", "--out", str(tmp_path / "z"))
    assert out.returncode == 0, out.stderr
    assert json.loads(run_cli("models", "detect", str(tmp_path / "z")).stdout)["family"] == "qwen2_5_vl"


def test_parser_builds_without_importing_torch():
    code = "import sys; from qvq_tune.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", "the CLI should start fast: no torch import to print help"
