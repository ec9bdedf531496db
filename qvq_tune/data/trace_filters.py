"""`data build --filter`: keep replies that fail the evaluator's reasoning checks out of
training data, each check with its own quarantine reason.

    loops         reasoning_loop   the reply repeats itself (diagnostics.loop_report)
    language-mix  language_mix     it switches script mid-reply (diagnostics.language_mix)
    no-answer     no_answer        the reply gives no final answer (a trace cut off, never
                                   concluded, or an answer that stops mid-sentence)
    too-long      trace_too_long   its reasoning trace is longer than --max-trace-tokens

The checks run on every assistant turn of a conversation and on the chosen reply of a
preference pair (a rejected reply is meant to be bad). The expected script is that of
the user turns, so a Chinese dataset is judged as Chinese.

Each reply is judged as the evaluator judges a generated one (`written_reply`, then
`answers.extract_answer`), whatever shape the input gave it: a trace in a field of its
own, inline think markers or QVQ's final-answer block are written back as one reply with
the trace inside think markers, whose answer is what follows them; a reply without a
trace is judged as it stands. So a reply the filter calls `no_answer` is one eval scores
as `no_answer`, and the quarantine row says how the reply was read (`read_as`).
"""

from __future__ import annotations

from typing import Callable

from ..errors import UserError
from .answers import extract_answer
from .diagnostics import dominant_script, language_mix, loop_report
from .messages import Conversation, Turn
from .quarantine import RecordError
from .reasoning import format_reply

FILTERS: dict[str, str] = {"loops": "reasoning_loop", "language-mix": "language_mix",
                           "no-answer": "no_answer", "too-long": "trace_too_long"}
DEFAULT_MAX_TRACE_TOKENS = 8192      # QVQ-72B-Preview's model card generates with max_new_tokens=8192


def parse_filters(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in FILTERS]
    if unknown:
        raise UserError(f"unknown --filter {', '.join(unknown)}; choose from {', '.join(FILTERS)}", key="filters")
    return names


def check_replies(example, filters: tuple[str, ...], count_tokens: Callable[[str], int],
                  max_trace_tokens: int = DEFAULT_MAX_TRACE_TOKENS) -> None:
    """Raise `RecordError` (the check's reason code) for the first reply that fails a check."""
    if not filters:
        return
    if isinstance(example, Conversation):
        prompt = [t for t in example.turns if t.role == "user"]
        replies = [(i, t) for i, t in enumerate(example.turns) if t.role == "assistant"]
    else:
        prompt, replies = [t for t in example.prompt if t.role == "user"], [("chosen", example.chosen)]
    expected = dominant_script(" ".join(t.text for t in prompt))
    for where, turn in replies:
        for name in filters:
            problem = _check(name, turn, expected, count_tokens, max_trace_tokens)
            if problem:
                raise RecordError(FILTERS[name], f"assistant turn {where}: {problem} (--filter {name})",
                                  field="reasoning" if turn.reasoning else "answer")


def written_reply(turn: Turn) -> str:
    """An assistant turn as one reply, the way a thinking model writes it: its trace between
    think markers, then its answer (the answer alone when it has no trace)."""
    return format_reply(turn.reasoning, turn.text, "think") if turn.reasoning else turn.text


def _check(name: str, turn: Turn, expected: str | None, count_tokens, max_trace_tokens: int) -> str | None:
    reply = f"{turn.reasoning}\n\n{turn.text}" if turn.reasoning else turn.text
    if name == "loops":
        loop = loop_report(reply)
        if loop["flagged"]:
            return f"{loop['score']:.0%} of it repeats ({loop['repeats']} x {loop['span']!r})"
    elif name == "language-mix":
        mix = language_mix(reply, expected)
        if mix["flagged"]:
            return f"{mix['score']:.0%} of its words are not {mix['expected']} ({', '.join(mix['spans'][:3])})"
    elif name == "no-answer":
        if not turn.tool_calls and extract_answer(written_reply(turn)).answer is None:
            return f"no final answer (a trace that never concludes, or is cut off; read as {turn.read_as})"
    elif name == "too-long":
        n = count_tokens(turn.reasoning or "")
        if n > max_trace_tokens:
            return f"a {n}-token trace > --max-trace-tokens {max_trace_tokens}"
    return None
