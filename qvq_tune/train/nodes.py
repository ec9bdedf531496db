"""Jobs beyond one machine: what `qvq-tune train --prepare` writes and prints for them, and
the command each node runs.

`prepare_nodes` (after `run.prepare` wrote the run folder once, on a filesystem every node
shares) resolves the launcher preset for N nodes (`launch.write_resolved_config`: DeepSpeed's
`standard` multi-node launcher, so each node runs its own local launcher), writes
`launch.sbatch` when asked, and returns one command per node:

    NODE_RANK=R /abs/python -m qvq_tune.train.nodes --run /abs/runs/NAME

Each node runs it with the first node's address in `MASTER_ADDR` (`MASTER_PORT`: 29500 unless
set). The node (`run_node`) reads where it sits (`node_env`: torchrun-style `NODE_RANK`,
`MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`; with `--slurm`, Slurm's `SLURM_NODEID` and
`SLURM_NNODES`) and checks it against the job the run folder was prepared for; continues
from the run's last complete checkpoint when it has one, so a job restarted after a kill
or requeued by Slurm resumes (node 0 first removes the saves after it); leaves a finished
run alone; and runs accelerate's launcher for its own ranks, its output in
`logs/node{R}.log`. A rank that finds fewer ranks than the run needs refuses to train
(`worker.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UserError
from ..recipe import Recipe
from ..run_folder import ACCELERATE_CONFIG, NODE_LOGS, SBATCH, RunFolder
from ..slurm import SlurmOptions, python_argv, quote, write_script
from .launch import accelerate_command, resolve_accelerate_config, run_launcher, write_resolved_config
from .run import WORKER_MODULE, worker_args

NODE_MODULE = "qvq_tune.train.nodes"
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class NodeEnv:
    rank: int
    nodes: int
    master_addr: str
    master_port: int


def node_env(nodes: int, processes: int, env: Mapping[str, str], *, slurm: bool = False) -> NodeEnv:
    """Where this node sits in a job of `nodes` nodes and `processes` ranks, from its environment."""
    def number(name: str, default: int | None = None) -> int:
        text = env.get(name)
        if text is None and default is not None:
            return default
        if text is None or not text.strip().isdigit():
            raise UserError(f"{name} must be set to a whole number on each node, got {text!r}", key=name)
        return int(text)

    if slurm:
        rank, given = number("SLURM_NODEID"), number("SLURM_NNODES")
        if given != nodes:
            raise UserError(f"the Slurm allocation has {given} nodes but this run was prepared for {nodes}; "
                            f"submit it with --nodes={nodes}", key="SLURM_NNODES")
        rank_name = "SLURM_NODEID"
    else:
        rank, rank_name = number("NODE_RANK", 0 if nodes == 1 else None), "NODE_RANK"
        world = env.get("WORLD_SIZE")
        if world is not None and world.strip() not in (str(nodes), str(processes)):
            raise UserError(f"WORLD_SIZE={world} here, but this run was prepared for {nodes} nodes and "
                            f"{processes} ranks", key="WORLD_SIZE")
    if rank >= nodes:
        raise UserError(f"{rank_name}={rank}, but this run was prepared for {nodes} nodes (0 .. {nodes - 1})",
                        key=rank_name)
    addr = env.get("MASTER_ADDR") or ("127.0.0.1" if nodes == 1 else None)
    if not addr:
        raise UserError("MASTER_ADDR must hold the first node's address on every node", key="MASTER_ADDR")
    return NodeEnv(rank, nodes, addr, number("MASTER_PORT", DEFAULT_PORT))


def planned_nodes(recipe: Recipe, nodes: int | None) -> int:
    """`--nodes`, else the launcher preset's `num_machines`."""
    if nodes is not None:
        if nodes < 1:
            raise UserError(f"--nodes must be positive, got {nodes}", key="--nodes")
        return nodes
    preset = yaml.safe_load(resolve_accelerate_config(recipe.launch.accelerate_config).read_text()) or {}
    return int(preset.get("num_machines") or 1)


def shape_recipe(recipe: Recipe, nodes: int | None, gpus_per_node: int | None) -> tuple[Recipe, int]:
    """The recipe with `launch.num_processes` = nodes x `--gpus-per-node` when given; and the node count."""
    count = planned_nodes(recipe, nodes)
    if gpus_per_node is not None:
        if gpus_per_node < 1:
            raise UserError(f"--gpus-per-node must be positive, got {gpus_per_node}", key="--gpus-per-node")
        recipe = dataclasses.replace(recipe, launch=dataclasses.replace(recipe.launch,
                                                                        num_processes=count * gpus_per_node))
    if recipe.launch.num_processes % count:
        raise UserError(f"launch.num_processes ({recipe.launch.num_processes}) must be a multiple of the "
                        f"{count} nodes", key="launch.num_processes")
    return recipe, count


def prepare_nodes(recipe: Recipe, run: RunFolder, nodes: int, *, gpus: bool | None = None,
                  slurm: SlurmOptions | None = None) -> dict:
    """Resolve the launcher for `nodes` nodes into the run folder (`gpus=True`: run on the
    nodes' GPUs even when this machine has none), write `launch.sbatch` when `slurm` is
    given; what each node runs."""
    write_resolved_config(recipe.launch.accelerate_config, recipe.launch.num_processes,
                          run.file(ACCELERATE_CONFIG), nodes=nodes, cpu=None if gpus is None else not gpus)
    run.file(NODE_LOGS).mkdir(exist_ok=True)
    command = python_argv(NODE_MODULE, "--run", run.path.absolute())
    info = {"run": str(run.path.absolute()), "nodes": nodes,
            "processes_per_node": recipe.launch.num_processes // nodes,
            "commands": [f"NODE_RANK={r} {quote(command)}" for r in range(nodes)], "sbatch": None}
    if slurm is not None:
        info["sbatch"] = str(write_sbatch(run, recipe, nodes, gpus=gpus, options=slurm))
    return info


def write_sbatch(run: RunFolder, recipe: Recipe, nodes: int, *, gpus: bool | None, options: SlurmOptions) -> Path:
    """`launch.sbatch`: one node launcher per allocated node through `srun`; the first node of
    the allocation is the meeting point; requeue-safe, since each node continues from the last
    complete checkpoint."""
    per_node = recipe.launch.num_processes // nodes
    logs = run.file(NODE_LOGS).absolute()
    directives: dict[str, object] = {"job-name": f"qvq-{recipe.name}", "nodes": nodes, "ntasks-per-node": 1}
    if gpus:
        directives["gpus-per-node"] = per_node
    directives.update(options.directives())
    directives.update({"requeue": None, "open-mode": "append", "output": f"{logs}/slurm-%j.out"})
    node = quote(python_argv(NODE_MODULE, "--run", run.path.absolute(), "--slurm"))
    return write_script(run.file(SBATCH), directives=directives, about=[
        f"Written by `qvq-tune train --prepare --slurm` for {run.path.absolute()}:",
        f"{nodes} nodes x {per_node} processes. Submit with: sbatch {run.file(SBATCH).absolute()}",
        "Requeue-safe: a requeued or resubmitted job continues from the last complete checkpoint.",
        f"Each node's output: {logs}/node<R>.log",
    ], body=[
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        'export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"',
        f"srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 {node}",
    ])


def describe(info: dict) -> str:
    """What `--prepare` prints."""
    lines = [f"run folder: {info['run']} ({info['nodes']} node(s) x {info['processes_per_node']} process(es))",
             "on every node set MASTER_ADDR to node 0's address (and MASTER_PORT, default "
             f"{DEFAULT_PORT}), then run on node R:", *info["commands"]]
    if info["sbatch"]:
        lines.append(f"or submit the Slurm script: sbatch {info['sbatch']}")
    return "\n".join(lines)


def run_node(run: RunFolder, env: Mapping[str, str], *, slurm: bool = False) -> int:
    """One node's share of the job (see the module docstring); the launcher's exit code."""
    config_file = run.file(ACCELERATE_CONFIG)
    if not config_file.is_file():
        raise UserError("no accelerate_config.yaml: write the run folder with `qvq-tune train --prepare`",
                        path=str(run.path))
    config = yaml.safe_load(config_file.read_text()) or {}
    processes, nodes = int(config["num_processes"]), int(config.get("num_machines") or 1)
    where = node_env(nodes, processes, env, slurm=slurm)
    if run.finished():
        print(f"qvq-tune: {run.path} already finished (train_report.json); nothing to do", file=sys.stderr)
        return 0
    if where.rank == 0:
        with run.lock():                        # no worker of an earlier attempt still trains here
            resume_from = run.last_complete_checkpoint()
            run.drop_checkpoints_after(resume_from)
    else:
        resume_from = run.last_complete_checkpoint()
    if resume_from is not None:
        print(f"qvq-tune: node {where.rank}: resuming from {resume_from}", file=sys.stderr, flush=True)
    launcher = ["--machine_rank", str(where.rank), "--main_process_ip", where.master_addr,
                "--main_process_port", str(where.master_port)]
    cmd = accelerate_command(WORKER_MODULE, worker_args(run, str(resume_from) if resume_from else None),
                             config_file, launcher)
    try:
        run_launcher(cmd, run.file(NODE_LOGS) / f"node{where.rank}.log", local_processes=processes // nodes,
                     append=True)
    except RuntimeError as exc:
        print(f"qvq-tune: node {where.rank}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one node of a multi-node qvq-tune job "
                                                 "(the command `qvq-tune train --prepare` prints)")
    parser.add_argument("--run", required=True, help="the run folder `qvq-tune train --prepare` wrote")
    parser.add_argument("--slurm", action="store_true",
                        help="take this node's rank and the node count from Slurm (SLURM_NODEID, SLURM_NNODES)")
    args = parser.parse_args(argv)
    try:
        return run_node(RunFolder(args.run), os.environ, slurm=args.slurm)
    except UserError as exc:
        print(f"qvq-tune: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
