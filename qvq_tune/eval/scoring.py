"""One reply -> one scored row; rows -> the summary. Every summary number is computed
here from the rows alone, so `summary.json` can be recomputed from `samples.jsonl`.

Row: `id`, `sample` (index among a prompt's sampled replies), `condition` ("real", or
"blank" when every image and video frame was blanked), `reference`, `choices`, `reply`,
`trace`, `extracted`, `source` (which extraction rule found it), `match` ("exact",
"numeric", "choice" or null), `correct`, and `diagnostics` (`data/diagnostics.py`). Rows of a
tool loop or a multi-turn transcript add `transcript` (each reply, the tool results it got) and
`tools` (`data/tool_calls.tool_call_diagnostics`: turns, calls, parsed, known, valid); the
reply scored is the last one.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ..data.answers import extract_answer, match_answer, normalize
from ..data.diagnostics import diagnose, dominant_script, trace_of
from ..models.registry import THINK_TOKENS

# (metric, better) in the order reports and comparisons show them; better: "higher" | "lower" | None.
METRICS = (
    ("n", None), ("accuracy", "higher"), ("blank_accuracy", "lower"), ("image_reliance", "higher"),
    ("pass_at_n", "higher"), ("majority_accuracy", "higher"),
    ("truncated_rate", "lower"), ("no_answer_rate", "lower"), ("loop_rate", "lower"),
    ("mean_loop_score", "lower"), ("language_mix_rate", "lower"), ("mean_language_mix_score", "lower"),
    ("consistency_rate", "higher"), ("mean_tokens", None), ("max_tokens", None),
    ("tool_call_parse_rate", "higher"), ("tool_call_known_rate", "higher"), ("tool_call_valid_rate", "higher"),
    ("calls_per_reply", None), ("mean_turns", None),
)


def score_reply(reply: str, reference: str, *, choices=None, num_tokens: int | None = None,
                hit_budget: bool | None = None, reference_reply: str | None = None,
                think: tuple[str, str] = THINK_TOKENS, rel_tol: float = 1e-4) -> dict:
    found = extract_answer(reply, think, cut=bool(hit_budget))
    match = match_answer(found.answer, reference, choices, rel_tol=rel_tol)
    expected = dominant_script(reference_reply or "") or dominant_script(reference)
    return {"reference": reference, "choices": choices, "reply": reply, "trace": trace_of(reply, found, think),
            "extracted": found.answer, "source": found.source, "match": match, "correct": match is not None,
            "diagnostics": diagnose(reply, found, num_tokens=num_tokens, hit_budget=hit_budget,
                                    expected_script=expected, choices=choices, think=think)}


def _rate(count: int, n: int) -> float | None:
    return round(count / n, 4) if n else None


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def summarize(rows: list[dict]) -> dict:
    """Metrics over the real-media rows; blank-media rows give `blank_accuracy` and
    `image_reliance`; several replies per prompt give `pass_at_n` and `majority_accuracy`."""
    real = [r for r in rows if r.get("condition", "real") == "real"]
    blank = [r for r in rows if r.get("condition") == "blank"]
    n = len(real)
    diag = [r["diagnostics"] for r in real]
    checked = [d["consistent"] for d in diag if d["consistent"] is not None]
    counts = {"correct": sum(r["correct"] for r in real),
              "truncated": sum(d["truncated"] for d in diag), "no_answer": sum(d["no_answer"] for d in diag),
              "hit_budget": sum(bool(d["hit_budget"]) for d in diag),
              "loops": sum(d["loop"]["flagged"] for d in diag),
              "language_mix": sum(d["language_mix"]["flagged"] for d in diag),
              "inconsistent": sum(c is False for c in checked)}
    summary = {
        "n": n, "prompts": len({r["id"] for r in real}), **counts,
        "accuracy": _rate(counts["correct"], n),
        "truncated_rate": _rate(counts["truncated"], n), "no_answer_rate": _rate(counts["no_answer"], n),
        "loop_rate": _rate(counts["loops"], n), "mean_loop_score": _mean([d["loop"]["score"] for d in diag]),
        "language_mix_rate": _rate(counts["language_mix"], n),
        "mean_language_mix_score": _mean([d["language_mix"]["score"] for d in diag]),
        "consistency_checked": len(checked), "consistency_rate": _rate(sum(checked), len(checked)),
        "mean_tokens": _mean([d["tokens"] for d in diag]),
        "max_tokens": max((d["tokens"] for d in diag if d["tokens"] is not None), default=None),
        "matched_by": dict(Counter(r["match"] for r in real if r["match"])),
        "answer_sources": dict(Counter(r["source"] for r in real)),
    }
    summary.update(tool_summary(real))
    if blank:
        summary["blank_n"] = len(blank)
        summary["blank_accuracy"] = _rate(sum(r["correct"] for r in blank), len(blank))
        summary["image_reliance"] = round(summary["accuracy"] - summary["blank_accuracy"], 4) if n else None
    by_prompt = defaultdict(list)
    for r in real:
        by_prompt[r["id"]].append(r)
    if any(len(group) > 1 for group in by_prompt.values()):
        summary["samples_per_prompt"] = max(len(group) for group in by_prompt.values())
        summary["pass_at_n"] = _rate(sum(any(r["correct"] for r in g) for g in by_prompt.values()), len(by_prompt))
        summary["majority_accuracy"] = _rate(sum(_majority_correct(g) for g in by_prompt.values()), len(by_prompt))
    return summary


def tool_summary(rows: list[dict]) -> dict:
    """Tool-call metrics over rows that ran the tool loop or carry a transcript (`tools`)."""
    diag = [r["tools"] for r in rows if r.get("tools")]
    if not diag:
        return {}
    calls = sum(d["calls"] for d in diag)
    return {"tool_calls": calls, "tool_call_parse_rate": _rate(sum(d["parsed"] for d in diag), calls),
            "tool_call_known_rate": _rate(sum(d["known"] for d in diag), calls),
            "tool_call_valid_rate": _rate(sum(d["valid"] for d in diag), calls),
            "calls_per_reply": _mean([d["calls"] for d in diag]), "mean_turns": _mean([d["turns"] for d in diag])}


def _majority_correct(group: list[dict]) -> bool:
    """Self-consistency: the most frequent extracted answer (first seen wins a tie) is right."""
    votes = Counter(normalize(r["extracted"]) for r in group if r["extracted"] is not None)
    if not votes:
        return False
    top = votes.most_common(1)[0][0]
    return next(r["correct"] for r in group if r["extracted"] is not None and normalize(r["extracted"]) == top)
