"""Statistics of a built dataset and the sample-length histogram.

Statistics are read back from the written (memory-mapped) datasets' columns, so they
describe exactly what trainers will consume. Every summary has the same keys:
`count, min, mean, p50, p95, max`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..paths import atomic_file


def summary(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"count": 0, "min": None, "mean": None, "p50": None, "p95": None, "max": None}
    return {"count": int(a.size), "min": _num(a.min()), "mean": round(float(a.mean()), 2),
            "p50": _num(np.percentile(a, 50)), "p95": _num(np.percentile(a, 95)), "max": _num(a.max())}


def _num(x) -> int | float:
    x = float(x)
    return int(x) if x.is_integer() else round(x, 2)


def _column(ds, name: str) -> np.ndarray:
    return ds.data.column(name).to_numpy()


def _list_lengths(ds, *names: str) -> np.ndarray:
    import pyarrow.compute as pc
    total = np.zeros(len(ds), dtype=np.int64)
    for name in names:
        total += pc.fill_null(pc.list_value_length(ds.data.column(name)), 0).to_numpy()
    return total


def sft_stats(ds) -> dict:
    """Token, vision-token, reasoning and media statistics of an SFT dataset."""
    return {
        "num_tokens": summary(_column(ds, "num_tokens")),
        "num_label_tokens": summary(_column(ds, "num_label_tokens")),
        "num_vision_tokens": summary(_column(ds, "num_vision_tokens")),
        "reasoning_chars": summary(_column(ds, "reasoning_chars")),
        "media_per_sample": summary(_list_lengths(ds, "images", "videos")),
    }


def preference_stats(ds) -> dict:
    return {
        "num_tokens": summary(_column(ds, "num_tokens")),
        "prompt_tokens": summary(_list_lengths(ds, "prompt_input_ids")),
        "chosen_tokens": summary(_list_lengths(ds, "chosen_input_ids")),
        "rejected_tokens": summary(_list_lengths(ds, "rejected_input_ids")),
        "num_vision_tokens": summary(_column(ds, "num_vision_tokens")),
        "media_per_sample": summary(_list_lengths(ds, "images", "videos")),
    }


def length_histogram(path: str | Path, series: dict[str, np.ndarray], *, max_tokens: int | None = None) -> None:
    """A PNG histogram of sample lengths (one series per dataset), written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    plotted = False
    for label, values in series.items():
        if len(values):
            ax.hist(values, bins=min(50, max(5, len(np.unique(values)))), alpha=0.6,
                    label=f"{label} (n={len(values)})")
            plotted = True
    if max_tokens:
        ax.axvline(max_tokens, color="red", linestyle="--", label=f"--max-tokens {max_tokens}")
    if not plotted:
        ax.text(0.5, 0.5, "no samples kept", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("tokens per sample (text + vision)")
    ax.set_ylabel("samples")
    ax.set_title("Sample lengths")
    if plotted or max_tokens:
        ax.legend()
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
