"""Human-facing summaries: a rich table, a PNG of the loss curve and accuracies, and
the markdown evaluation report (metric table and worst samples)."""

from __future__ import annotations

from pathlib import Path

from .scoring import METRICS


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


def print_summary(rows: list[tuple[str, ...]], title: str, columns: tuple[str, ...] = ("metric", "value")) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(stderr=False).print(table)


# ---- markdown ------------------------------------------------------------------------------
WORST_SHOWN = 10
EXCERPT = 240


def is_share(name: str) -> bool:
    """Rates and accuracies (shown in percent, compared in points)."""
    return name.endswith(("_rate", "accuracy")) or name in ("pass_at_n", "image_reliance")


def format_metric(name: str, value) -> str:
    """A metric as people read it: shares in percent, the rest as numbers."""
    if value is None:
        return "-"
    if is_share(name):
        return f"{value:.1%}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > 2 * EXCERPT:
        text = f"{text[:EXCERPT]} [...] {text[-EXCERPT:]}"
    return text.replace("|", "\\|")


def worst_rows(rows: list[dict], k: int = WORST_SHOWN) -> list[dict]:
    """Wrong replies first, then by how many diagnostics fired and how loopy they are."""
    real = [r for r in rows if r.get("condition", "real") == "real"]
    ranked = sorted(real, key=lambda r: (r["correct"], -len(r["diagnostics"]["flags"]),
                                         -r["diagnostics"]["loop"]["score"]))
    return [r for r in ranked if not r["correct"] or r["diagnostics"]["flags"]][:k]


def markdown_report(summary: dict, rows: list[dict], title: str) -> str:
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {format_metric(name, summary.get(name))} |" for name, _ in METRICS if name in summary]
    lines += ["", "Counts: " + ", ".join(f"{k} {summary[k]}" for k in (
        "correct", "truncated", "no_answer", "hit_budget", "loops", "language_mix", "inconsistent")), "",
        "Matched by: " + (", ".join(f"{k} {v}" for k, v in summary["matched_by"].items()) or "-"),
        "Answers found by: " + ", ".join(f"{k} {v}" for k, v in summary["answer_sources"].items()), "",
        "## Worst samples", "", "| id | reference | extracted | flags | reply |", "|---|---|---|---|---|"]
    for r in worst_rows(rows):
        flags = ", ".join(r["diagnostics"]["flags"]) or ("wrong" if not r["correct"] else "")
        lines.append(f"| {r['id']} | {_excerpt(str(r['reference']))} | {_excerpt(str(r['extracted']))} | "
                     f"{flags} | {_excerpt(r['reply'])} |")
    return "\n".join(lines) + "\n"
