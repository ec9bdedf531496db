"""Checks before expensive work (issue 16): everything that can be checked without the model
(data folders and their kind, recipe values, the accelerate config, the demo's task and
preset, start adapters, data.eval's processor settings) fails before the tiny base is
built, downloaded or launched. Each case runs with an empty cache and leaves it empty."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from qvq_tune.cli.main import main

from .conftest import REPO


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty QVQ_TUNE_CACHE, where the tiny base would be built on first use."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("QVQ_TUNE_CACHE", str(cache))
    return cache


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def builds(tiny_model, tmp_path_factory):
    """Preference pairs, and a test split built with other pixel limits than the defaults."""
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.synth.generate import SynthConfig, generate
    root = tmp_path_factory.mktemp("checks_first")
    generate(SynthConfig(train=4, validation=0, test=4, dpo=True), root / "raw", progress=False)
    model = str(tiny_model("qwen2_vl"))
    build(BuildConfig(input=str(root / "raw" / "dpo_train.jsonl"), model=model, out=str(root / "pairs"),
                      reasoning="qvq", workers=1))
    build(BuildConfig(input=str(root / "raw" / "test.jsonl"), model=model, out=str(root / "small"),
                      reasoning="qvq", min_pixels=56 * 56, max_pixels=56 * 56, workers=1))
    return {"pairs": root / "pairs", "small": root / "small"}


def test_the_issues_command_fails_fast_without_building_the_tiny_base(tmp_path):
    """`train --recipe recipes/demo_dpo_zero3.yaml --set data.train=no-such-folder` with an
    empty cache: one line naming the folder, and nothing built into the cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "QVQ_TUNE_CACHE": str(cache)}
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "qvq_tune", "train", "--recipe",
                          str(REPO / "recipes" / "demo_dpo_zero3.yaml"), "--set", "data.train=no-such-folder"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    print(f"failed after {time.time() - start:.1f} s")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "no-such-folder" in out.stderr and "does not exist" in out.stderr and "data.train" in out.stderr
    assert _files(cache) == []


@pytest.mark.parametrize("case", ["missing data", "wrong kind", "accelerate config", "start adapter",
                                  "eval processor", "recipe value", "demo task", "demo preset"])
def test_what_needs_no_model_is_checked_before_the_tiny_base_is_built(case, builds, built_train, empty_cache,
                                                                      capsys, monkeypatch):
    import qvq_tune.tiny.pretrain as pretrain

    def must_not_build(*a, **k):
        raise AssertionError("the tiny base was built before the check")
    monkeypatch.setattr(pretrain, "ensure_tiny_base", must_not_build)
    dpo = ["train", "--recipe", "demo_dpo_zero3", "--set", f"data.train={builds['pairs']}",
           "--set", "dpo.start_adapter=null"]
    sft = ["train", "--recipe", "demo_qlora_zero3", "--set", f"data.train={built_train['train']}"]
    argv, needles = {
        "missing data": (dpo + ["--set", "data.train=no-such-folder"], ["no-such-folder", "data.train"]),
        "wrong kind": (dpo + ["--set", f"data.train={built_train['train']}"], ["preference pairs"]),
        "accelerate config": (dpo + ["--set", "launch.accelerate_config=zero9"], ["zero9"]),
        "start adapter": (dpo + ["--set", "dpo.start_adapter=no-such-adapter"],
                          ["no-such-adapter", "dpo.start_adapter"]),
        "eval processor": (sft + ["--set", f"data.eval={builds['small']}"],
                           [str(builds["small"]), str(built_train["train"]), "max_pixels"]),
        "recipe value": (sft + ["--set", "lora.r=0"], ["lora.r must be positive"]),
        "demo task": (["demo", "--task", "no_such_task", "--out", str(empty_cache.parent / "demo")],
                      ["no_such_task"]),
        "demo preset": (["demo", "--accelerate-config", "zero9", "--out", str(empty_cache.parent / "demo")],
                        ["zero9"]),
    }[case]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert all(n in err for n in needles), err
    assert _files(empty_cache) == []
    assert not (empty_cache.parent / "demo").exists()
