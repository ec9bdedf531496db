"""Scored replies of one prompt -> preference pairs (or why it gives none).

A reply is judged from its eval row (`eval/scoring.py`: the same answer extraction and
reasoning diagnostics `qvq-tune eval` reports), so a reply called right here is right in
the evaluation too.

- chosen: right (`correct`), concluded (it ended its turn: no final answer missing, not cut
  by the token budget) and clean (no loop, no language mixing, no trace that contradicts
  its answer);
- rejected: any other reply, tagged with every reason it is one (`REJECT_TAGS`): wrong,
  looping, language-mixed, truncated (cut by the budget before an answer), overlong (hit
  the budget after answering), no answer, inconsistent.

A prompt whose replies include both gives pairs; one that does not says why
(`NO_PAIR`): every reply is a chosen one (`all_right`), no reply is right (`all_wrong`),
or its right replies are all defective (`all_defective`). Wrong replies are rejected
first (the outcome signal), then right but defective ones, each in sample order; with
`pairs_per_prompt` > 1 each further pair takes the next rejected reply and the next
chosen one (cycling), never the same two texts twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import cycle

# Diagnostic flag -> rejection tag (flags as `data/diagnostics.diagnose` names them).
_FLAG_TAGS = {"loop": "looping", "language_mix": "language_mixed", "truncated": "truncated",
              "no_answer": "no_answer", "inconsistent": "inconsistent"}
REJECT_TAGS = ("wrong", "looping", "language_mixed", "truncated", "overlong", "no_answer", "inconsistent")
NO_PAIR: dict[str, str] = {
    "all_right": "every sampled reply is right, concluded and clean: nothing to reject",
    "all_wrong": "no sampled reply is right: nothing to choose",
    "all_defective": "the right replies all loop, mix languages, stop unfinished or contradict "
                     "themselves: nothing clean to choose",
}


def reject_tags(row: dict) -> list[str]:
    """Why a scored reply cannot be chosen ([] for a chosen one), in `REJECT_TAGS` order."""
    diag = row["diagnostics"]
    tags = {_FLAG_TAGS[f] for f in diag["flags"] if f in _FLAG_TAGS}
    if not row["correct"]:
        tags.add("wrong")
    if diag.get("hit_budget") and not diag["truncated"]:
        tags.add("overlong")
    return [t for t in REJECT_TAGS if t in tags]


@dataclass
class PromptPairs:
    """The pairs one prompt gave (chosen row, rejected row, rejection tags), or `no_pair`."""
    pairs: list[tuple[dict, dict, list[str]]] = field(default_factory=list)
    no_pair: str | None = None           # a `NO_PAIR` key when `pairs` is empty


def reason(tags: list[str]) -> str:
    """A pair's reason as reports show it: "right vs wrong+looping"."""
    return "right vs " + "+".join(tags)


def pair_replies(rows: list[dict], pairs_per_prompt: int = 1) -> PromptPairs:
    """Pairs from the scored replies of one prompt (eval rows, in sample order)."""
    tagged = [(row, reject_tags(row)) for row in rows]
    chosen = [row for row, tags in tagged if not tags]
    rejected = sorted(((row, tags) for row, tags in tagged if tags), key=lambda rt: "wrong" not in rt[1])
    if not chosen:
        return PromptPairs(no_pair="all_wrong" if not any(r["correct"] for r in rows) else "all_defective")
    if not rejected:
        return PromptPairs(no_pair="all_right")
    out, seen = PromptPairs(), set()
    for good, (bad, tags) in zip(cycle(chosen), rejected):
        if len(out.pairs) == pairs_per_prompt:
            break
        if (good["reply"], bad["reply"]) not in seen:
            seen.add((good["reply"], bad["reply"]))
            out.pairs.append((good, bad, tags))
    return out
