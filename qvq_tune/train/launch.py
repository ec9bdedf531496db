"""Start a training worker under `accelerate launch` with a packaged launcher preset.

`--accelerate-config zero3` resolves to the packaged `presets/accelerate/zero3.yaml`
(the repository's `accelerate_configs/` holds the same files), or give a path.
The preset is resolved into the run folder (`accelerate_config.yaml`) with the process
count filled in; on a machine without a GPU it gets `use_cpu: true`, so the same presets run DDP and DeepSpeed ZeRO-2/3 across CPU processes
(gloo), which is how CI tests them for real. (`accelerate launch --cpu` would instead
silently fall back to a single process.)

A preset for several machines (`num_machines` > 1, or `qvq-tune train --prepare --nodes N`)
is resolved with DeepSpeed's `standard` multi-node launcher, so each node runs its own
local launcher (torchrun) that meets the others at the first node's address; accelerate's
default would hand the whole job to DeepSpeed's pdsh launcher on node 0. Such a job is
started node by node (`train/nodes.py`), never by `launch`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from .. import presets as packaged
from ..errors import UserError
from ..run_folder import ACCELERATE_CONFIG, TRAIN_LOG


def presets() -> list[str]:
    return packaged.names(packaged.ACCELERATE)


def resolve_accelerate_config(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return path
    preset = packaged.find(packaged.ACCELERATE, name_or_path)
    if preset is not None:
        return preset
    raise UserError(f"unknown accelerate config {name_or_path!r}: not a file and not one of the "
                    f"presets {', '.join(presets())}", key="launch.accelerate_config")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_resolved_config(config: str, num_processes: int, out: Path, nodes: int | None = None,
                          cpu: bool | None = None) -> Path:
    """The preset with this run's process count (and node count: `nodes`, else the preset's
    `num_machines`), adapted to CPU-only ranks (`cpu`; None: when this machine has no GPU)
    and to one launcher per node."""
    import torch
    import yaml

    from ..paths import write_text_atomic
    source = resolve_accelerate_config(config)
    cfg = yaml.safe_load(source.read_text()) or {}
    cfg["num_processes"] = num_processes
    nodes = nodes or int(cfg.get("num_machines") or 1)
    ds = cfg.get("deepspeed_config") or {}
    if ds.get("deepspeed_config_file"):  # relative to the preset, not to the working directory
        ds["deepspeed_config_file"] = str((source.parent / ds["deepspeed_config_file"]).resolve())
    if (not torch.cuda.is_available()) if cpu is None else cpu:
        # Keeps MULTI_GPU / DEEPSPEED so accelerate still starts one process per rank
        # (torchrun / deepspeed launcher); use_cpu makes each rank run on the CPU with gloo.
        cfg["use_cpu"] = True
    if nodes > 1:
        if cfg.get("distributed_type") not in ("MULTI_GPU", "DEEPSPEED") or num_processes % nodes:
            raise UserError(f"{nodes} nodes need a DDP or DeepSpeed preset (ddp, zero2, zero3, ...) and "
                            f"launch.num_processes a multiple of {nodes}, got {cfg.get('distributed_type')} "
                            f"with {num_processes}", key="launch.num_processes")
        cfg["num_machines"] = nodes
        for key in ("machine_rank", "main_process_ip", "main_process_port"):   # each node's own, at launch
            cfg.pop(key, None)
        if cfg["distributed_type"] == "DEEPSPEED":
            cfg["deepspeed_config"] = {**ds, "deepspeed_multinode_launcher": "standard"}
    else:
        cfg["num_machines"] = 1
    if num_processes == 1 and cfg.get("distributed_type") == "MULTI_GPU":
        cfg["distributed_type"] = "NO"
    write_text_atomic(out, yaml.safe_dump(cfg, sort_keys=False))
    return out


def accelerate_command(worker_module: str, worker_args: list[str], config_file: Path,
                       launcher_args: list[str] | None = None) -> list[str]:
    """`python -m accelerate.commands.launch ...` with this interpreter (no PATH lookup);
    `launcher_args` default to a free local port (a single-node job)."""
    launcher_args = launcher_args or ["--main_process_port", str(_free_port())]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            *launcher_args, "-m", worker_module, *worker_args]


def launch(worker_module: str, worker_args: list[str], *, config: str, num_processes: int,
           run_dir: str | Path) -> None:
    """Run the worker under accelerate on this machine; its output goes to the run's `train.log`."""
    run_dir = Path(run_dir)
    config_file = write_resolved_config(config, num_processes, run_dir / ACCELERATE_CONFIG)
    import yaml
    nodes = yaml.safe_load(config_file.read_text()).get("num_machines", 1)
    if nodes > 1:
        raise UserError(f"this launcher preset spans {nodes} machines: write the run folder with "
                        "`qvq-tune train --prepare` and start each node with the command it prints",
                        key="launch.accelerate_config")
    run_launcher(accelerate_command(worker_module, worker_args, config_file), run_dir / TRAIN_LOG,
                 local_processes=num_processes)


def run_launcher(cmd: list[str], log_path: Path, *, local_processes: int, append: bool = False) -> None:
    """Run an accelerate launcher with offline hubs and one CPU share per local process;
    stream its output (noise filtered) and tee it to `log_path`."""
    env = dict(os.environ)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):     # the launcher sets each worker's own
        env.pop(key, None)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // local_processes)))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::UserWarning")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a" if append else "w", encoding="utf-8")
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        tail: list[str] = []
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line])[-40:]
            if _worth_showing(line):
                sys.stderr.write(line)
        code = proc.wait()
    finally:
        log.close()
    if code != 0:
        raise RuntimeError(f"training worker failed (exit {code}); last lines:\n{''.join(tail)}"
                           + f"\nfull log: {log_path}")


_NOISE = ("gemm_4bit_forward", "real_accelerator.py", "FutureWarning", "UserWarning", "warnings.warn",
          "return func(", "Loading weights", "Writing model shards", "[INFO]", "[WARNING]",
          "cpp_extension.py", "built successfully")
_GLOG = re.compile(r"^(\[rank\d+\]:)?[WI]\d{4} ")   # torch's glog-style warnings / info


def _worth_showing(line: str) -> bool:
    return not any(n in line for n in _NOISE) and not _GLOG.match(line)
