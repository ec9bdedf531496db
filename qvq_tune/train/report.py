"""The end of a run: `train_report.json` and the loss-curve PNG, from the trainer's state
and the run's `metrics.jsonl` (rank 0 only). The objective's record names the metrics it
adds (`report_keys`: first and last value in the report; `plot_keys`: a second panel)."""

from __future__ import annotations

import time
from pathlib import Path

from ..paths import atomic_file, write_json_atomic
from ..recipe import Recipe
from ..run_folder import METRICS, PLOT, TRAIN_REPORT, RunFolder
from .callbacks import peak_memory_mib, read_metrics
from .model_setup import trainable_summary, zero3_partition


def _series(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if key in r]


def finish(trainer, result, recipe: Recipe, run: RunFolder, processor, objective, **report_kwargs) -> dict:
    """Save the adapter (or full weights) with the processor, then the report and plot."""
    partition = zero3_partition(trainer.model_wrapped)      # every rank's holdings, before the save gathers
    trainer.save_model(str(run.adapter))
    if not trainer.is_world_process_zero():
        return {}
    processor.save_pretrained(str(run.adapter))
    return write_report(trainer, result, recipe, run, objective, zero3=partition, **report_kwargs)


def write_report(trainer, result, recipe: Recipe, run: RunFolder, objective, *, samples: int, started: float,
                 resumed_from: str | None, rss_before_model_mib: float, zero3: dict | None = None) -> dict:
    """`objective`: its record (`train/objectives.py`), for the keys it adds."""
    rows = read_metrics(run.file(METRICS))
    collator = trainer.data_collator if trainer.args.dataloader_num_workers == 0 else None
    losses, evals = _series(rows, "loss"), _series(rows, "eval_loss")

    def mean(key: str, digits: int = 1) -> float | None:
        values = _series(rows, key)
        return round(sum(values) / len(values), digits) if values else None
    report = {
        "objective": recipe.objective, "method": recipe.method, "world_size": trainer.args.world_size,
        "steps": result.global_step, "samples": samples,
        "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
        "train_loss_mean": result.training_loss,
        "eval_loss_best": min(evals) if evals else None,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "tokens_per_s": mean("tokens_per_s"), "samples_per_s": mean("samples_per_s", 2),
        "padding_share": mean("padding_share", 4), "mfu": mean("mfu", 4),
        "wall_seconds": round(time.time() - started, 1), "train_runtime_s": result.metrics.get("train_runtime"),
        "resumed_from": resumed_from, "adapter": str(run.adapter),
        "pixel_cache": collator.pixels.stats() if hasattr(collator, "pixels") else None,
        "collate_seconds": round(collator.seconds, 2) if hasattr(collator, "seconds") else None,
        "num_tokens": next(iter(_series(rows, "tokens_seen")[-1:] or _series(rows, "num_tokens")[-1:]), None),
        "train_cpu_seconds": next(iter(_series(rows, "train_cpu_seconds")[-1:]), None),
        **trainable_summary(trainer.model), **peak_memory_mib(), "rss_before_model_mib": rss_before_model_mib,
        "zero3_partition": zero3,
    }
    logged = sorted({k for r in rows for k in r})
    for key in [k for prefix in objective.report_keys for k in logged
                if k == prefix or prefix.endswith("/") and k.startswith(prefix)]:
        values = _series(rows, key)
        if values:
            name = key.replace("/", "_")
            report[f"{name}_first"], report[f"{name}_last"] = values[0], values[-1]
    write_json_atomic(run.file(TRAIN_REPORT), report)
    plot_losses(rows, run.file(PLOT), f"{recipe.name}: {recipe.objective} ({recipe.method})", objective.plot_keys)
    return report


def plot_losses(rows: list[dict], out_png: str | Path, title: str, beside: tuple[str, ...] = ()) -> None:
    """Training (and validation) loss by step; beside it, the objective's own metrics
    (`beside`, e.g. DPO's reward margin and chosen / rejected log-probabilities)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    second = any(key in r for r in rows for key in beside)
    fig, axes = plt.subplots(1, 2 if second else 1, figsize=(10 if second else 6, 4), squeeze=False)
    ax = axes[0][0]
    for key, style in (("loss", "-"), ("eval_loss", "o--")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), style, label=key.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if ax.lines:
        ax.legend()
    if second:
        ax2 = axes[0][1]
        for key in beside:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax2.plot(*zip(*pts), label=key)
        ax2.set_xlabel("step")
        ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_file(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
