"""Reasoning formats: split an assistant reply into (trace, answer) and write it back.

Three formats (the family registry's reasoning styles), selected by `--reasoning`:
- `qvq`: QVQ-72B-Preview's free-form trace followed by its final-answer block,
  `...trace...\n\n**Final Answer**\n\n\\[ \\boxed{answer} \\]`;
- `think`: Qwen3 style, the trace between the family's think markers, then the answer;
- `answer-only`: the answer alone (the trace is dropped).
The think markers come from the family record (`ModelFamily.think_tokens`); input data
is split on the markers Qwen's thinking models write (`models.registry.THINK_TOKENS`).
`answer_offset` finds where a written reply's answer begins, for the renderer's per-token
reasoning / answer spans. `read_reply` says how a reply's trace was found in input data
(`READ_AS`): in a field of its own, between think markers, before QVQ's final-answer
marker, or not at all.
"""

from __future__ import annotations

import re
from typing import Literal

from ..models.registry import REASONING_STYLES, THINK_TOKENS, ReasoningStyle

ReasoningFormat = ReasoningStyle
FORMATS: tuple[str, ...] = REASONING_STYLES

FINAL_ANSWER_MARKER = "**Final Answer**"
# How a reader found an assistant reply's trace: a field of its own (`reasoning_content`,
# `reasoning`, a reasoning part), think markers inline, QVQ's trace before its final-answer
# marker inline, or no trace at all.
ReadAs = Literal["field", "think", "qvq", "answer-only"]
READ_AS: tuple[str, ...] = ("field", "think", "qvq", "answer-only")
_FINAL = re.compile(r"\*\*Final Answer:?\*\*:?", re.I)


def _think_pattern(think: tuple[str, str]) -> re.Pattern:
    open_, close = (re.escape(t) for t in think)
    return re.compile(rf"^\s*{open_}(.*?){close}\s*(.*)$", re.S)


_THINK = _think_pattern(THINK_TOKENS)


def format_reply(reasoning: str | None, answer: str, fmt: ReasoningFormat,
                 think: tuple[str, str] = THINK_TOKENS, *, final: bool = True) -> str:
    """A reply in `fmt`. `final=False` (a turn that goes on to call tools): no final-answer
    block; in `qvq` the trace, then the text as it is."""
    answer = answer.strip()
    reasoning = (reasoning or "").strip()
    if not final and fmt == "qvq":
        return "\n\n".join(x for x in (reasoning, answer) if x)
    if fmt == "answer-only" or not reasoning and fmt == "qvq":
        return answer if fmt == "answer-only" else _qvq_final(answer)
    if fmt == "qvq":
        return f"{reasoning}\n\n{_qvq_final(answer)}"
    if fmt == "think":
        return f"{think[0]}\n{reasoning}\n{think[1]}\n\n{answer}"
    raise ValueError(f"unknown reasoning format {fmt!r}")


def answer_offset(reply: str, fmt: ReasoningFormat, think: tuple[str, str] = THINK_TOKENS) -> int:
    """Where the answer section of a reply written in `fmt` starts, as rendered: after the
    think block (its close marker and the blank line after it; Qwen3's template writes an
    empty one before replies without), then, in `qvq`, at the final-answer marker, which
    opens the answer block; 0 when the whole reply is the answer."""
    close = reply.rfind(think[1])
    start = 0
    if close >= 0:
        start = close + len(think[1])
        start += len(reply[start:]) - len(reply[start:].lstrip())
    marker = reply.rfind(FINAL_ANSWER_MARKER, start) if fmt == "qvq" else -1
    return marker if marker >= 0 else start


def _qvq_final(answer: str) -> str:
    # QVQ boxes short answers; a sentence-long answer is written plainly after the marker.
    if "\n" in answer or len(answer) > 60:
        return f"{FINAL_ANSWER_MARKER}\n\n{answer}"
    return f"{FINAL_ANSWER_MARKER}\n\n\\[ \\boxed{{{answer}}} \\]"


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}`, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth, out = start + len("\\boxed{"), 1, []
    while i < len(text):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return "".join(out).strip()
        out.append(ch)
        i += 1
    return None


def split_reply(text: str, think: tuple[str, str] = THINK_TOKENS) -> tuple[str | None, str]:
    """Split a reply into (reasoning, answer) whatever format it was written in.

    Think markers win; then QVQ's final-answer marker; otherwise the whole text is the
    answer and there is no separate trace.
    """
    return read_reply(text, think)[:2]


def read_reply(text: str, think: tuple[str, str] = THINK_TOKENS) -> tuple[str | None, str, ReadAs]:
    """`split_reply`'s (reasoning, answer) and how the trace was found (`READ_AS`; a reply
    with no trace is read as "answer-only", an empty think block included)."""
    m = (_THINK if think == THINK_TOKENS else _think_pattern(think)).match(text)
    if m:
        trace = m.group(1).strip() or None
        return trace, m.group(2).strip(), "think" if trace else "answer-only"
    m = None
    for m in _FINAL.finditer(text):
        pass
    if m is not None:
        trace, tail = text[:m.start()].strip(), text[m.end():].strip()
        boxed = extract_boxed(tail)
        answer = boxed if boxed is not None else tail
        return (trace or None), answer.strip(), "qvq" if trace else "answer-only"
    return None, text.strip(), "answer-only"


# ---- preference pairs cut where they differ (Step-DPO style) -----------------------------
PairCut = Literal["none", "divergence", "step"]
PAIR_CUTS: tuple[str, ...] = ("none", "divergence", "step")
# A step ends after sentence punctuation (not inside "2.5" or "e.g.") or before a line break.
_STEP_END = re.compile(r"(?<=[.!?。！？])(?![^\W_])|(?=\n)")


def _step_ends(text: str) -> list[int]:
    return [m.start() for m in _STEP_END.finditer(text)]


def _step_end(text: str, start: int) -> int:
    """The end of the reasoning step that starts at `start` (after its leading white
    space), or the end of the reply (end-of-turn token included)."""
    body = len(text) - len(text[start:].lstrip())
    return next((e for e in _step_ends(text) if e > body), len(text))


def cut_pair(chosen: str, rejected: str, mode: PairCut) -> tuple[str, list[str]]:
    """(shared start, [chosen part, rejected part]) of two replies.

    `none`: nothing shared, the whole replies. `divergence`: the common start, back to a
    word boundary, is shared; each reply keeps the rest of the step in which it departs.
    `step`: the common start back to a step boundary is shared; each keeps its whole
    diverging step. Cutting keeps the pair's signal on the first step that differs, so a
    looping or language-mixed reply does not push down the correct steps it repeats.
    White space between the shared start and the parts stays with the parts, so they
    tokenise as they would inside the whole reply. Identical replies are kept whole.
    """
    if mode == "none" or chosen == rejected:
        return "", [chosen, rejected]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if mode == "step":
        n = max(e for e in [0, *_step_ends(chosen)] if e <= n)
    else:
        while n > 0 and not chosen[n - 1].isspace():
            n -= 1
    while n > 0 and chosen[n - 1].isspace():
        n -= 1
    return chosen[:n], [reply[n:_step_end(reply, n)] for reply in (chosen, rejected)]
