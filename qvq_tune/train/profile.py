"""Where a training step's time goes: `profile.steps: N` in a recipe runs torch's profiler
over N optimizer steps (after `profile.start_step` warm-up steps) on every rank and writes
`RUN/profile/rank{R}.json`:

- `step_seconds`: wall time of each profiled step (forward, backward, optimizer, and the
  ZeRO-3 gathers and reduce-scatters inside them), and `between_steps_seconds`: the time
  from one step's end to the next one's start (fetching and collating the next batch,
  logging, callbacks);
- `share`: the profiled wall time split into data loading, matrix multiplies, attention,
  4-bit (de)quantisation, collective communication, optimizer, other operators, and the rest
  (Python, autograd and DeepSpeed hooks: wall time no operator accounts for);
- `top_ops`: the operators with the most self time.

With `profile.trace: true` it also writes a Chrome trace (`rank{R}.trace.json`) to open in
Perfetto or chrome://tracing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from ..paths import write_json_atomic

# Operator-name fragments per category, checked in this order (first match wins).
CATEGORIES = (
    ("data_loading", ("dataloader",)),
    ("communication", ("all_gather", "allgather", "reduce_scatter", "all_reduce", "allreduce", "broadcast",
                       "c10d", "gloo", "nccl", "barrier", "record_param_comms")),
    ("quantisation", ("bitsandbytes", "dequantize", "quantize_4bit", "nf4")),
    ("attention", ("scaled_dot_product", "flash_attn", "_efficient_attention")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation",
                "aten::linear_backward")),
    ("optimizer", ("_foreach_", "adam", "optimizer.step", "_fused_adam")),
)


def category(op_name: str) -> str:
    name = op_name.lower()
    for cat, fragments in CATEGORIES:
        if any(f in name for f in fragments):
            return cat
    return "other_ops"


def breakdown(events, wall_seconds: float, top: int = 12) -> dict:
    """Self time per category (seconds and share of the profiled wall time) from
    `profiler.key_averages()`; the wall time no operator accounts for is `python_and_hooks`."""
    seconds: dict[str, float] = {cat: 0.0 for cat, _ in CATEGORIES}
    seconds["other_ops"] = 0.0
    ops = []
    for e in events:
        if e.key.startswith("ProfilerStep") or e.key.startswith("## "):
            continue
        self_s = e.self_cpu_time_total / 1e6
        seconds[category(e.key)] += self_s
        ops.append((self_s, e.key, e.count))
    seconds["python_and_hooks"] = max(0.0, wall_seconds - sum(seconds.values()))
    total = max(wall_seconds, sum(seconds.values()), 1e-9)
    return {"seconds": {k: round(v, 4) for k, v in seconds.items()},
            "share": {k: round(v / total, 4) for k, v in seconds.items()},
            "top_ops": [{"op": name, "self_seconds": round(s, 4), "calls": n}
                        for s, name, n in sorted(ops, reverse=True)[:top]]}


class StepProfiler(TrainerCallback):
    """Profiles optimizer steps [start_step, start_step + steps) of this rank."""

    def __init__(self, folder: str | Path, start_step: int, steps: int, trace: bool = False):
        self.folder, self.start, self.steps, self.trace = Path(folder), start_step, steps, trace
        self.profiler = None
        self.step_seconds: list[float] = []
        self.between: list[float] = []
        self._began = self._ended = None
        self._wall0 = None

    def on_step_begin(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self.profiler is None and self.step_seconds == [] and state.global_step >= self.start:
            import torch
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self._wall0 = now = time.perf_counter()
        elif self.profiler is not None and self._ended is not None:
            self.between.append(now - self._ended)
        self._began = now

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is None or self._began is None:
            return
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._ended = time.perf_counter()
        self.step_seconds.append(self._ended - self._began)
        if len(self.step_seconds) >= self.steps:
            self._finish(args.process_index)

    def on_train_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self._finish(args.process_index)

    def _finish(self, rank: int) -> None:
        profiler, self.profiler = self.profiler, None
        wall = time.perf_counter() - self._wall0
        profiler.__exit__(None, None, None)
        result = {"rank": rank, "first_step": self.start + 1, "steps": len(self.step_seconds),
                  "wall_seconds": round(wall, 4),
                  "step_seconds": [round(s, 4) for s in self.step_seconds],
                  "mean_step_seconds": round(sum(self.step_seconds) / max(1, len(self.step_seconds)), 4),
                  "between_steps_seconds": [round(s, 4) for s in self.between],
                  **breakdown(profiler.key_averages(), wall)}
        write_json_atomic(self.folder / f"rank{rank}.json", result)
        if self.trace:
            profiler.export_chrome_trace(str(self.folder / f"rank{rank}.trace.json"))
        if rank == 0:
            share = result["share"]
            parts = ", ".join(f"{k} {v:.0%}" for k, v in sorted(share.items(), key=lambda kv: -kv[1]) if v >= 0.01)
            print(f"qvq-tune: profile (rank 0, {result['steps']} steps, {result['mean_step_seconds']:.3f} s/step): "
                  f"{parts} -> {self.folder / 'rank0.json'}", file=sys.stderr, flush=True)
