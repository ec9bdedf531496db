"""Start a training worker under `accelerate launch` with a packaged launcher preset.

`--accelerate-config zero3` resolves to the packaged `presets/accelerate/zero3.yaml`
(the repository's `accelerate_configs/` holds the same files), or give a path.
The preset is resolved into the run folder (`accelerate_config.yaml`) with the process
count filled in; on a machine without a GPU it gets `use_cpu: true`, so the same presets run DDP and DeepSpeed ZeRO-2/3 across CPU processes
(gloo), which is how CI tests them for real. (`accelerate launch --cpu` would instead
silently fall back to a single process.)
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


def write_resolved_config(config: str, num_processes: int, out: Path) -> Path:
    """The preset with this run's process count, adapted to a CPU-only machine."""
    import torch
    import yaml

    from ..paths import write_text_atomic
    source = resolve_accelerate_config(config)
    cfg = yaml.safe_load(source.read_text()) or {}
    cfg["num_processes"] = num_processes
    ds = cfg.get("deepspeed_config") or {}
    if ds.get("deepspeed_config_file"):  # relative to the preset, not to the working directory
        ds["deepspeed_config_file"] = str((source.parent / ds["deepspeed_config_file"]).resolve())
    if not torch.cuda.is_available():
        # Keeps MULTI_GPU / DEEPSPEED so accelerate still starts one process per rank
        # (torchrun / deepspeed launcher); use_cpu makes each rank run on the CPU with gloo.
        cfg["use_cpu"] = True
    if num_processes == 1 and cfg.get("distributed_type") == "MULTI_GPU":
        cfg["distributed_type"] = "NO"
    write_text_atomic(out, yaml.safe_dump(cfg, sort_keys=False))
    return out


def accelerate_command(worker_module: str, worker_args: list[str], config_file: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "--main_process_port", str(_free_port()), "-m", worker_module, *worker_args]


def launch(worker_module: str, worker_args: list[str], *, config: str, num_processes: int,
           run_dir: str | Path) -> None:
    """Run the worker under accelerate; stream its output and tee it to the run's `train.log`."""
    run_dir = Path(run_dir)
    config_file = write_resolved_config(config, num_processes, run_dir / ACCELERATE_CONFIG)
    log_path = run_dir / TRAIN_LOG
    cmd = accelerate_command(worker_module, worker_args, config_file)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::UserWarning")
    log = open(log_path, "w", encoding="utf-8")
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
