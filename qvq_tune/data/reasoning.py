"""Reasoning formats: split an assistant reply into (trace, answer) and write it back.

Three formats (the family registry's reasoning styles), selected by `--reasoning`:
- `qvq`: QVQ-72B-Preview's free-form trace followed by its final-answer block,
  `...trace...\n\n**Final Answer**\n\n\\[ \\boxed{answer} \\]`;
- `think`: Qwen3 style, the trace between the family's think markers, then the answer;
- `answer-only`: the answer alone (the trace is dropped).
The think markers come from the family record (`ModelFamily.think_tokens`); input data
is split on the markers Qwen's thinking models write (`models.registry.THINK_TOKENS`).
`answer_offset` finds where a written reply's answer begins, for the renderer's per-token
reasoning / answer spans.
"""

from __future__ import annotations

import re

from ..models.registry import REASONING_STYLES, THINK_TOKENS, ReasoningStyle

ReasoningFormat = ReasoningStyle
FORMATS: tuple[str, ...] = REASONING_STYLES

FINAL_ANSWER_MARKER = "**Final Answer**"
_FINAL = re.compile(r"\*\*Final Answer:?\*\*:?", re.I)


def _think_pattern(think: tuple[str, str]) -> re.Pattern:
    open_, close = (re.escape(t) for t in think)
    return re.compile(rf"^\s*{open_}(.*?){close}\s*(.*)$", re.S)


_THINK = _think_pattern(THINK_TOKENS)


def format_reply(reasoning: str | None, answer: str, fmt: ReasoningFormat,
                 think: tuple[str, str] = THINK_TOKENS) -> str:
    answer = answer.strip()
    reasoning = (reasoning or "").strip()
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
    m = (_THINK if think == THINK_TOKENS else _think_pattern(think)).match(text)
    if m:
        return (m.group(1).strip() or None), m.group(2).strip()
    m = None
    for m in _FINAL.finditer(text):
        pass
    if m is not None:
        trace, tail = text[:m.start()].strip(), text[m.end():].strip()
        boxed = extract_boxed(tail)
        answer = boxed if boxed is not None else tail
        return (trace or None), answer.strip()
    return None, text.strip()
