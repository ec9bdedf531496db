"""Human-facing summaries: a rich table and a PNG of the loss curve and accuracies."""

from __future__ import annotations

from pathlib import Path


def plot_run(metrics: list[dict], accuracies: dict[str, float], out_png: str | Path, title: str,
             defects: dict[str, float] | None = None) -> Path:
    """Loss curve and held-out accuracies (and, when given, defect rates) side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if defects else 2, figsize=(15 if defects else 10, 4))
    ax1, ax2 = axes[0], axes[1]
    pts = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    if pts:
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color="tab:blue")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.set_yscale("log")
    ax1.set_title("loss")
    names = list(accuracies)
    values = [accuracies[k] for k in names]
    bars = ax2.bar(names, values, color=["tab:gray", "tab:green", "tab:orange", "tab:blue", "tab:purple"][:len(names)])
    for bar, v in zip(bars, values):
        ax2.text(bar.get_x() + bar.get_width() / 2, v + 0.02, f"{v:.1%}", ha="center")
    ax2.set_ylim(0, 1.1)
    ax2.set_ylabel("held-out accuracy")
    ax2.set_title("before / after")
    if defects:
        ax3 = axes[2]
        bars = ax3.bar(list(defects), list(defects.values()), color=["tab:red", "tab:green"][:len(defects)])
        for bar, v in zip(bars, defects.values()):
            ax3.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.1%}", ha="center")
        ax3.set_ylim(0, max(0.1, max(defects.values()) * 1.3))
        ax3.set_ylabel("sampled replies with a taught defect")
        ax3.set_title("loops / language mixing")
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def print_summary(rows: list[tuple[str, str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, v)
    Console(stderr=False).print(table)
