"""Trainer callbacks: per-step metrics, progress, checkpoints that are known complete, and
the DPO collapse warning.

- `MetricsJsonl`: every log line (loss, learning rate, grad norm; DPO's reward accuracy
  and margin, chosen / rejected log-probs) plus non-padding tokens/s, samples/s, padding
  share (all ranks together), MFU on known GPUs and peak memory, appended to the run's
  `metrics.jsonl` (rank 0); at the end, the CPU seconds every rank's process spent from the
  first step to the last, summed (`train_cpu_seconds`: on a shared machine, less sensitive
  to other jobs' load than the wall time). On resume it keeps the lines up to the checkpoint's step
  and drops the ones a killed run logged after it.
- `Progress`: the progress bar with the latest loss as its postfix, instead of printing
  raw metric dicts.
- `MarkComplete`: after a checkpoint is saved on every rank, writes a marker into it; a
  checkpoint without one (a kill during the save) is never resumed from.
- `ChosenLogpWatch` (DPO): warns when the chosen reply's log-probability falls far below
  where it started, the sign of a collapse that reward accuracy does not show.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from ..run_folder import COMPLETE_MARKER


def peak_memory_mib() -> dict:
    """Peak resident memory of this process (and, on GPU, peak allocated / reserved)."""
    import torch
    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["peak_gpu_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        out["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2 ** 20, 1)
    return out


class MetricsJsonl(TrainerCallback):
    def __init__(self, path: str | Path, stats=None, flops_per_token: float | None = None):
        self.path = Path(path)
        self.stats = stats                      # a BatchStats fed by the model's forward hook
        self.flops_per_token = flops_per_token  # for MFU on GPUs whose peak is known
        self._t0 = self._last = time.time()
        self.tokens_seen = 0                    # non-padding tokens trained on, all ranks, this session
        self._cpu0 = time.process_time()

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = self._last = time.time()
        self._cpu0 = time.process_time()
        if self.stats is not None:
            self.stats.take()                   # nothing before the first step counts
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= state.global_step] \
            if state.global_step else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        now = time.time()
        counts = self.stats.take() if self.stats is not None and logs and "loss" in logs else None
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "elapsed_s": round(now - self._t0, 2), **logs}
        if counts:
            self.tokens_seen += counts["tokens"]
            row["tokens_seen"] = self.tokens_seen
        if counts and counts["positions"] and now > self._last:
            seconds = now - self._last
            row.update(tokens_per_s=round(counts["tokens"] / seconds, 1),
                       samples_per_s=round(counts["samples"] / seconds, 2),
                       padding_share=round(1 - counts["tokens"] / counts["positions"], 4))
            mfu = model_flops_utilisation(row["tokens_per_s"], self.flops_per_token, args.world_size)
            if mfu is not None:
                row["mfu"] = round(mfu, 4)
        if counts is not None:
            self._last = now
        row.update(peak_memory_mib())
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        seconds = sum_over_ranks(time.process_time() - self._cpu0)
        if state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, "train_cpu_seconds": round(seconds, 2)}) + "\n")


def sum_over_ranks(value: float) -> float:
    """`value` summed over all ranks (a collective when distributed: every rank calls it)."""
    import torch
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    total = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return float(total.item())


# Dense bf16 peak per GPU, from the vendors' datasheets (H200 shares the H100 SXM's compute).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def model_flops_utilisation(tokens_per_s: float, flops_per_token: float | None, world_size: int) -> float | None:
    import torch
    if not flops_per_token or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return tokens_per_s * flops_per_token / (peak * world_size) if peak else None


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress(ProgressCallback):
    """transformers' progress bar, showing the loss as a postfix rather than printing dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {k: f"{v:.4g}" for k, v in logs.items()
                     if k in ("loss", "eval_loss", "rewards/accuracies", "rewards/margins") and isinstance(v, float)}
            if shown:
                self.training_bar.set_postfix(shown, refresh=False)


class MarkComplete(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState
        PartialState().wait_for_everyone()          # every rank has written its part
        if state.is_world_process_zero:
            from ..paths import write_json_atomic
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_json_atomic(folder / COMPLETE_MARKER, {"step": state.global_step})
        PartialState().wait_for_everyone()


class ChosenLogpWatch(TrainerCallback):
    def __init__(self, drop: float):
        self.drop = drop
        self.start: float | None = None
        self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get("logps/chosen")
        if value is None or not state.is_world_process_zero:
            return
        if self.start is None:
            self.start = value
        elif not self.warned and value < self.start - self.drop:
            self.warned = True
            print(f"qvq-tune: warning: the chosen replies' log-probability fell from {self.start:.2f} to "
                  f"{value:.2f} at step {state.global_step}: DPO may be pushing every reply down (collapse). "
                  "Try cutting pairs at their divergence point (data build --pair-cut), a smaller learning "
                  "rate, a larger dpo.beta, or dpo.sft_weight > 0.", file=sys.stderr, flush=True)
