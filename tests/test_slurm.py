"""Slurm scripts for the sharded data build (`qvq-tune data build --num-shards N --slurm`),
run as Slurm would run them: the array script once per task id, then the merge script."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .test_shards import inputs, quarantine, rows  # noqa: F401  (the sharded-build input fixture)


def test_the_array_script_builds_each_shard_and_the_merge_script_joins_them(tmp_path, tiny_model, inputs):  # noqa: F811
    from qvq_tune.data.build import BuildConfig, build
    model = tiny_model("qwen2_vl")
    out = tmp_path / "built" / "train"
    written = subprocess.run([sys.executable, "-m", "qvq_tune", "data", "build", "--input", str(inputs / "in"),
                              "--image-root", str(inputs), "--model", str(model), "--out", str(out),
                              "--num-shards", "2", "--workers", "1", "--max-tokens", "4000", "--slurm",
                              "--partition", "cpu", "--time", "0:20:00"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    work = tmp_path / "built" / "train.shards"
    assert f"sbatch --dependency=afterok:$ID {work / 'merge.sbatch'}" in written.stdout
    assert not out.exists(), "--slurm writes the scripts, it builds nothing"
    array = (work / "build.sbatch").read_text().splitlines()
    for line in ("#SBATCH --array=0-1", "#SBATCH --partition=cpu", "#SBATCH --time=0:20:00",
                 "#SBATCH --cpus-per-task=1"):
        assert line in array
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    elsewhere = tmp_path / "elsewhere"                 # Slurm starts tasks in the submission folder, or not
    elsewhere.mkdir()
    for task in (0, 1):
        done = subprocess.run(["bash", str(work / "build.sbatch")], env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
                              capture_output=True, text=True, timeout=300, cwd=elsewhere)
        assert done.returncode == 0, done.stderr[-3000:]
    merged = subprocess.run(["bash", str(work / "merge.sbatch")], env=env, capture_output=True, text=True,
                            timeout=300, cwd=elsewhere)
    assert merged.returncode == 0, merged.stderr[-3000:]

    whole = tmp_path / "whole"
    build(BuildConfig(input=str(inputs / "in"), image_root=str(inputs), model=str(model), out=str(whole),
                      workers=1, max_tokens=4000))
    assert rows(out, "dataset") == rows(whole, "dataset") and rows(out, "dataset")
    assert len(quarantine(out)) == len(quarantine(whole))


def test_a_build_config_round_trips_through_the_flags_a_script_repeats(tmp_path):
    import argparse

    from qvq_tune.cli.args import add_dataclass_arguments, arguments_from_dataclass, dataclass_from_arguments
    from qvq_tune.data.build import BuildConfig
    (tmp_path / "in.jsonl").write_text("{}\n")
    config = BuildConfig(input=str(tmp_path / "in.jsonl"), model="m", out=str(tmp_path / "o"), truncate=True,
                         max_tokens=10, columns={"question": "problem", "answer": "solution"}, reuse=False,
                         filters=("loops", "too-long"), fps=1.5, num_shards=4, shard_index=3, system="Be brief.")
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, BuildConfig)
    flags = arguments_from_dataclass(config)
    assert "--no-cache" in flags and "--format" not in flags          # defaults are left out
    assert dataclass_from_arguments(BuildConfig, parser.parse_args(flags)) == config


def test_slurm_options_are_one_word_each():
    from qvq_tune.errors import UserError
    from qvq_tune.slurm import SlurmOptions
    with pytest.raises(UserError, match="--partition must be one word"):
        SlurmOptions(partition="gpu\n#SBATCH --x")
    assert SlurmOptions(partition="gpu", time="1:00:00").directives() == {"partition": "gpu", "time": "1:00:00"}
