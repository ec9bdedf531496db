"""Reasoning formats: split an assistant reply into (trace, answer) and write it back.

Three formats, selected by `--reasoning`:
- `qvq`: QVQ-72B-Preview's free-form trace followed by its final-answer block,
  `...trace...\n\n**Final Answer**\n\n\\[ \\boxed{answer} \\]`;
- `think`: Qwen3 style, `<think>\n...trace...\n</think>\n\nanswer`;
- `answer-only`: the answer alone (the trace is dropped).
"""

from __future__ import annotations

import re
from typing import Literal

ReasoningFormat = Literal["qvq", "think", "answer-only"]
FORMATS: tuple[str, ...] = ("qvq", "think", "answer-only")

FINAL_ANSWER_MARKER = "**Final Answer**"
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.S)
_FINAL = re.compile(r"\*\*Final Answer:?\*\*:?", re.I)


def format_reply(reasoning: str | None, answer: str, fmt: ReasoningFormat) -> str:
    answer = answer.strip()
    reasoning = (reasoning or "").strip()
    if fmt == "answer-only" or not reasoning and fmt == "qvq":
        return answer if fmt == "answer-only" else _qvq_final(answer)
    if fmt == "qvq":
        return f"{reasoning}\n\n{_qvq_final(answer)}"
    if fmt == "think":
        return f"<think>\n{reasoning}\n</think>\n\n{answer}"
    raise ValueError(f"unknown reasoning format {fmt!r}")


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


def split_reply(text: str) -> tuple[str | None, str]:
    """Split a reply into (reasoning, answer) whatever format it was written in.

    `<think>` tags win; then QVQ's final-answer marker; otherwise the whole text is the
    answer and there is no separate trace.
    """
    m = _THINK.match(text)
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
