"""`eval compare A B`: every metric of two evaluations side by side, with its delta.

A and B are evaluation folders (holding `summary.json`) or summary files. The demo uses
the same table for its before / after comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .evaluate import SUMMARY
from .report import format_metric, is_share
from .scoring import METRICS


def load_summary(path: str | Path) -> dict:
    path = Path(path)
    file = path / SUMMARY if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no {SUMMARY} here; pass a folder written by `qvq-tune eval` or `eval score`",
                        path=str(path))
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON ({exc.msg})", path=str(file), line=exc.lineno) from None


def compare(a: dict, b: dict) -> list[dict]:
    """One row per metric either summary has: a, b, b - a, and whether b is better."""
    rows = []
    for name, better in METRICS:
        va, vb = a.get(name), b.get(name)
        if va is None and vb is None:
            continue
        delta = round(vb - va, 4) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        improved = None if delta in (None, 0) or better is None else (delta > 0) == (better == "higher")
        rows.append({"metric": name, "a": va, "b": vb, "delta": delta, "improved": improved})
    return rows


def format_delta(name: str, delta) -> str:
    if delta is None:
        return "-"
    sign = "+" if delta > 0 else ""
    if is_share(name):
        return f"{sign}{delta * 100:.1f} pts"
    return f"{sign}{delta:.3f}" if isinstance(delta, float) else f"{sign}{delta}"


def table_rows(rows: list[dict]) -> list[tuple[str, str, str, str]]:
    """(metric, a, b, delta) as text, for a rich or markdown table."""
    marks = {True: " (better)", False: " (worse)", None: ""}
    return [(r["metric"], format_metric(r["metric"], r["a"]), format_metric(r["metric"], r["b"]),
             format_delta(r["metric"], r["delta"]) + marks[r["improved"]]) for r in rows]


def comparison_markdown(rows: list[dict], names: tuple[str, str] = ("A", "B")) -> str:
    lines = [f"| metric | {names[0]} | {names[1]} | delta |", "|---|---|---|---|"]
    lines += [f"| {m} | {a} | {b} | {d} |" for m, a, b, d in table_rows(rows)]
    return "\n".join(lines) + "\n"
