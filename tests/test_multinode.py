"""Jobs beyond one machine (issue 19), tested for real on this one: two nodes, each its own
`accelerate launch` (machine ranks 0 and 1, meeting on the loopback address) under DeepSpeed
ZeRO-3 across CPU processes, started only with what `qvq-tune train --prepare` prints or
writes (the per-node commands; the Slurm script, run with stand-ins for `srun` and
`scontrol`). Checked against the same job on one node with the same world size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import make_recipe
from .test_trainers import preference  # noqa: F401  (the DPO pairs fixture)

STEPS, SAVE = 4, 2
JOB = {"lora.dropout": 0.1, "optim.max_steps": STEPS, "optim.save_steps": SAVE, "optim.per_device_batch_size": 2,
       "launch.accelerate_config": "zero3_shard_all", "launch.num_processes": 2}
WRITTEN_ONCE = ("recipe.yaml", "base_model.json", "dataset.json", "chat_template.jinja", "accelerate_config.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    """What a cluster gives every node: the first node's address and a port (one CPU thread per
    rank, as in the one-node reference, so both compute alike)."""
    return dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1", **extra)


def _recipe(tmp_path, tiny_model, data, name: str, **over):
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), data, name=name, **{**JOB, **over})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    return recipe, path


def _cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "qvq_tune", "train", *map(str, args)], capture_output=True,
                         text=True, timeout=300)
    assert not check or out.returncode == 0, out.stderr[-3000:]
    return out


def _prepare(path: Path, *args) -> dict:
    return json.loads(_cli("--recipe", path, "--prepare", "--nodes", 2, "--json", *args).stdout)


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT)


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while not path.is_file():
        assert all(p.poll() is None for p in procs), "a node ended before the first checkpoint"
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def _kill_node(run: Path, variable: str, rank: int) -> None:
    """SIGKILL one node: its node launcher (found by the run folder and its rank variable) and
    everything it started (torch's workers run in sessions of their own)."""
    import psutil
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "qvq_tune.train.nodes" in " ".join(proc.info["cmdline"] or []) and str(run) in proc.info["cmdline"] \
                    and proc.environ().get(variable) == str(rank):
                found += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
    assert found, "node not found"
    for proc in found:
        proc.kill()
    _, alive = psutil.wait_procs(found, timeout=60)
    assert not alive


def _series(run: Path, key: str) -> list[tuple[int, float]]:
    from qvq_tune.train.callbacks import read_metrics
    return [(r["step"], r[key]) for r in read_metrics(run / "metrics.jsonl") if key in r]


def _same_series(run: Path, reference: Path, keys: tuple[str, ...]) -> None:
    for key in keys:
        ours, theirs = _series(run, key), _series(reference, key)
        assert [s for s, _ in ours] == list(range(1, STEPS + 1)), f"{key}: each step logged once"
        assert [s for s, _ in theirs] == [s for s, _ in ours]
        for (step, a), (_, b) in zip(ours, theirs):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6), (key, step)


def _snapshot(run: Path) -> dict:
    return {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) for name in WRITTEN_ONCE}


def _check_job(run: Path, reference: Path, keys: tuple[str, ...]) -> dict:
    """The finished two-node run: one report for both nodes, ZeRO-3 partitions on both, losses
    equal to the one-node job's, and checkpoints marked complete only with every rank's part."""
    report = json.loads((run / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == STEPS
    assert report["resumed_from"].endswith(f"checkpoint-{SAVE}")
    part = report["zero3_partition"]                    # rank 0 of node 0 holds half of every tensor ...
    assert part["partitioned_tensors"] > 0 and part["local_numel"] * 2 == pytest.approx(part["full_numel"], rel=0.02)
    _same_series(run, reference, keys)
    for ckpt in (run / "checkpoints").glob("checkpoint-*"):
        assert (ckpt / "qvq_tune_complete.json").is_file(), ckpt.name
        for rank in (0, 1):
            assert (ckpt / f"rng_state_{rank}.pth").is_file()
            (states,) = ckpt.glob(f"global_step*/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
            saved = torch.load(states, map_location="cpu", weights_only=False)["optimizer_state_dict"]
            # ... and rank 0 of node 1 the other half of the trained weights' optimizer state
            assert saved["partition_count"] == 2
            assert sum(t.numel() for t in saved["fp32_flat_groups"]) * 2 == report["trainable_parameters"]
    assert {p.name for p in (run / "logs").iterdir()} == {"node0.log", "node1.log"}
    assert not (run / "train.log").exists()
    return report


@pytest.mark.slow
def test_two_nodes_train_like_one_and_resume_after_one_node_is_killed(tmp_path, tiny_model, built_train,
                                                                    monkeypatch):
    """SFT: the printed per-node commands make one 2-rank job; node 1 is SIGKILLed after the
    first checkpoint, node 0 stops on its own, and `--prepare --resume` continues it."""
    from qvq_tune.train.run import train
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one, _ = _recipe(tmp_path, tiny_model, built_train["train"], "one")
    train(one)
    _, path = _recipe(tmp_path, tiny_model, built_train["train"], "two")

    prepared = _prepare(path)
    run = Path(prepared["run"])
    assert prepared["nodes"] == 2 and prepared["processes_per_node"] == 1
    env = _env()
    nodes = [_start(["bash", "-c", cmd], env, tmp_path / f"node{r}.out") for r, cmd in enumerate(prepared["commands"])]
    _wait_for(run / "checkpoints" / f"checkpoint-{SAVE}" / "qvq_tune_complete.json", nodes)
    _kill_node(run, "NODE_RANK", 1)
    assert nodes[0].wait(timeout=240) != 0, "node 0 must stop, not finish the run alone"
    assert not (run / "train_report.json").exists()

    refused = _cli("--recipe", path, "--prepare", "--nodes", 2, check=False)
    assert refused.returncode == 1 and "--resume" in refused.stderr
    prepared = _prepare(path, "--resume")
    written = _snapshot(run)
    env = _env()
    nodes = [_start(["bash", "-c", cmd], env, tmp_path / f"node{r}.out") for r, cmd in enumerate(prepared["commands"])]
    assert [n.wait(timeout=600) for n in nodes] == [0, 0], (tmp_path / "node1.out").read_text()[-3000:]
    assert _snapshot(run) == written, "the run folder's records are written once, by --prepare"
    _check_job(run, one.run_dir, ("loss", "learning_rate", "grad_norm"))
    assert "resuming from" in (run / "logs" / "node1.log").read_text() + (tmp_path / "node1.out").read_text()


SRUN = '''#!{python}
"""Stand-in for srun: one task per node of the pretend allocation, all on this machine, each
with the variables Slurm gives it; --kill-on-bad-exit: a failed task ends the others."""
import os, subprocess, sys, time
import psutil
args = sys.argv[1:]
while args and args[0].startswith("--"):
    args.pop(0)
tasks = [subprocess.Popen(args, env=dict(os.environ, SLURM_NODEID=str(i), SLURM_PROCID=str(i), SLURM_LOCALID="0"))
         for i in range(int(os.environ["SLURM_NNODES"]))]
while True:
    codes = [t.poll() for t in tasks]
    failed = [c for c in codes if c not in (None, 0)]
    if failed or None not in codes:
        for t in tasks:
            if t.poll() is None:
                tree = psutil.Process(t.pid)
                for p in [tree, *tree.children(recursive=True)]:
                    p.kill()
        sys.exit(failed[0] if failed else 0)
    time.sleep(0.1)
'''
SCONTROL = '''#!/bin/bash
# Stand-in for `scontrol show hostnames LIST`: every node of the pretend allocation is this machine.
[ "$1 $2" = "show hostnames" ] || exit 1
for ((i = 0; i < SLURM_NNODES; i++)); do echo 127.0.0.1; done
'''


def _slurm_stand_ins(folder: Path) -> Path:
    folder.mkdir()
    for name, text in (("srun", SRUN.format(python=sys.executable)), ("scontrol", SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def _slurm_env(stand_ins: Path) -> dict:
    return _env(PATH=f"{stand_ins}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node[1-2]",
                SLURM_NNODES="2")


@pytest.mark.slow
def test_slurm_script_runs_dpo_on_two_nodes_and_a_requeued_job_resumes(tmp_path, tiny_model, preference,  # noqa: F811
                                                                     monkeypatch):
    """DPO through `launch.sbatch` itself: node 1 is killed after the first checkpoint (srun ends
    the job), Slurm's requeue runs the script again and it continues; a third run finds the job done."""
    from qvq_tune.train.run import train
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one, _ = _recipe(tmp_path, tiny_model, preference, "one", objective="dpo")
    train(one)
    _, path = _recipe(tmp_path, tiny_model, preference, "two", objective="dpo")

    prepared = _prepare(path, "--slurm", "--partition", "debug", "--time", "0:30:00")
    script, run = Path(prepared["sbatch"]), Path(prepared["run"])
    text = script.read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --partition=debug",
                 "#SBATCH --time=0:30:00", "#SBATCH --requeue"):
        assert line in text.splitlines()
    stand_ins = _slurm_stand_ins(tmp_path / "bin")
    job = _start(["bash", str(script)], _slurm_env(stand_ins), tmp_path / "job.out")
    _wait_for(run / "checkpoints" / f"checkpoint-{SAVE}" / "qvq_tune_complete.json", [job])
    _kill_node(run, "SLURM_NODEID", 1)
    assert job.wait(timeout=240) != 0

    requeued = subprocess.run(["bash", str(script)], env=_slurm_env(stand_ins), capture_output=True, text=True,
                              timeout=600)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    _check_job(run, one.run_dir, ("loss", "rewards/margins", "logps/chosen", "logps/rejected"))
    again = subprocess.run(["bash", str(script)], env=_slurm_env(stand_ins), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "already finished" in again.stderr


# ---- what a node checks before it trains ------------------------------------------------------
def test_a_rank_alone_refuses_to_train(tmp_path, tiny_model, built_train):
    """A worker started for a 2-rank run in a 1-rank job (e.g. a launcher fell back to this
    machine's own ranks) stops before loading anything, and writes nothing into the run folder."""
    from qvq_tune.train.nodes import prepare_nodes
    from qvq_tune.train.run import prepare
    recipe, _ = _recipe(tmp_path, tiny_model, built_train["train"], "alone")
    recipe, run, _ = prepare(recipe)
    prepare_nodes(recipe, run, 2)
    before = sorted(p.name for p in run.path.iterdir())
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    out = subprocess.run([sys.executable, "-m", "qvq_tune.train.worker", "--run", str(run.path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "1 rank(s) but the run needs launch.num_processes = 2" in out.stderr
    assert sorted(p.name for p in run.path.iterdir()) == before


@pytest.mark.parametrize("env,slurm,needle", [
    ({"MASTER_ADDR": "a"}, False, "NODE_RANK must be set"),
    ({"NODE_RANK": "2", "MASTER_ADDR": "a"}, False, "NODE_RANK=2, but this run was prepared for 2 nodes"),
    ({"NODE_RANK": "1"}, False, "MASTER_ADDR must hold the first node's address"),
    ({"NODE_RANK": "1", "MASTER_ADDR": "a", "WORLD_SIZE": "3"}, False, "WORLD_SIZE=3"),
    ({"NODE_RANK": "1", "MASTER_ADDR": "a", "MASTER_PORT": "x"}, False, "MASTER_PORT must be set to a whole number"),
    ({"SLURM_NODEID": "0", "SLURM_NNODES": "3", "MASTER_ADDR": "a"}, True, "allocation has 3 nodes"),
])
def test_a_node_refuses_an_environment_that_does_not_match_the_prepared_job(env, slurm, needle):
    from qvq_tune.errors import UserError
    from qvq_tune.train.nodes import node_env
    with pytest.raises(UserError, match=needle):
        node_env(2, 4, env, slurm=slurm)


def test_a_node_reads_torchrun_and_slurm_variables():
    from qvq_tune.train.nodes import NodeEnv, node_env
    torchrun = {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234", "WORLD_SIZE": "2"}
    assert node_env(2, 4, torchrun) == NodeEnv(1, 2, "10.0.0.1", 1234)
    assert node_env(2, 4, {**torchrun, "WORLD_SIZE": "4"}).rank == 1        # nodes or ranks, as clusters differ
    slurm = {"SLURM_NODEID": "1", "SLURM_NNODES": "2", "MASTER_ADDR": "n1", "NODE_RANK": "0"}
    assert node_env(2, 4, slurm, slurm=True) == NodeEnv(1, 2, "n1", 29500)   # an inherited NODE_RANK is ignored
    assert node_env(1, 2, {}) == NodeEnv(0, 1, "127.0.0.1", 29500)


def test_a_multi_node_preset_resolves_to_one_launcher_per_node_and_is_not_launched_whole(tmp_path, tiny_model,
                                                                                       built_train):
    from qvq_tune.errors import UserError
    from qvq_tune.train.launch import write_resolved_config
    from qvq_tune.train.run import train
    cfg = yaml.safe_load(write_resolved_config("zero3", 4, tmp_path / "a.yaml", nodes=2).read_text())
    assert cfg["num_machines"] == 2 and cfg["num_processes"] == 4
    assert cfg["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"   # not pdsh from node 0
    assert "main_process_ip" not in cfg and "machine_rank" not in cfg           # each node's own, at launch
    gpu = yaml.safe_load(write_resolved_config("zero3", 4, tmp_path / "b.yaml", nodes=2, cpu=False).read_text())
    assert "use_cpu" not in gpu
    with pytest.raises(UserError, match="multiple of 2"):
        write_resolved_config("zero3", 3, tmp_path / "c.yaml", nodes=2)
    recipe, _ = _recipe(tmp_path, tiny_model, built_train["train"], "whole",
                        **{"launch.accelerate_config": "multi_node_zero3"})
    with pytest.raises(UserError, match="spans 2 machines"):
        train(recipe)
    assert not (recipe.run_dir / "metrics.jsonl").exists()
