"""Final-answer extraction and matching.

A reply's final answer is, in order of preference: the `\\boxed{}` content after
QVQ's final-answer marker, the text after the closing think tag, a "Final answer:" line, or the
whole reply. Matching normalises case, spacing, trailing punctuation and units the
reference also carries, and compares numbers numerically.
"""

from __future__ import annotations

import re

from ..data.reasoning import split_reply

_NUM = re.compile(r"^[-+]?\d+(?:\.\d+)?$")
_FINAL_LINE = re.compile(r"final answer\s*[:：]\s*(.+)$", re.I | re.M)


def extract_answer(reply: str) -> str:
    reasoning, answer = split_reply(reply)
    if reasoning is None:
        m = None
        for m in _FINAL_LINE.finditer(reply):
            pass
        if m is not None:
            answer = m.group(1)
    return normalize(answer)


def normalize(text: str) -> str:
    text = text.strip().strip("$").strip()
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()
    return text


def answers_match(predicted: str, reference: str) -> bool:
    p, r = normalize(predicted), normalize(reference)
    if p == r:
        return True
    pn, rn = _strip_unit(p, r), _strip_unit(r, r)
    if _NUM.match(pn) and _NUM.match(rn):
        return float(pn) == float(rn)
    return False


def _strip_unit(text: str, reference: str) -> str:
    parts = reference.split(" ", 1)
    if len(parts) == 2 and _NUM.match(parts[0]) and text.endswith(" " + parts[1]):
        return text[: -len(parts[1]) - 1].strip()
    return text
