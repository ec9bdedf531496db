"""Rewards of objective grpo: plain functions of one reply, scored by the eval's own code.

Every reward is `fn(reply, *, answer, reference_reply, num_tokens, hit_budget, ctx) -> float`, where
`reply` is the completion as the model wrote it with the template's generation prefix in
front (Qwen3-VL Thinking's prompt already opens the think block), `answer` the gold final
answer and `reference_reply` the whole reference reply of the built sample
(`data/prompts.py`), `num_tokens` the completion's length, `hit_budget` whether it was
cut by the budget (no end-of-turn token) and `ctx` the `ReplyContext`.
The recipe picks them by name with weights (`grpo.rewards`, `grpo.reward_weights`); a
user's own is `module:function` with the same signature.

    correct       1 when the final answer (`data/answers.extract_answer`, as eval reads it)
                  matches the gold (`match_answer`: units, numbers, options) and no hack
                  below fired; else 0
    format        1 for reasoning, then one final answer in the build's style (think block
                  closed then the answer; QVQ's trace then its final-answer marker), no hack
    loop          minus the share of tokens in verbatim repetition (`diagnostics.loop_report`,
                  on word / CJK-character tokens, so a Chinese loop counts like an English one)
    language_mix  minus the share of the reasoning's words outside the reference's script
                  (`diagnostics.language_mix`)
    overlong      DAPO's soft overlong penalty: 0 up to budget - cache tokens, then linear
                  to -1 at the budget

Hacks that never pay (`hacks`): an empty final answer (`<answer></answer>`, `\\boxed{}`),
several different final answers ("A or B", two boxed answers), text that keeps going
after the final answer, and an answer with no reasoning where the style asks for it.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Callable

from ..data.answers import NUMBER, Extraction, choice_letter, extract_answer, match_answer, normalize
from ..data.diagnostics import dominant_script, language_mix as mix_report, loop_report, trace_of
from ..models.registry import THINK_TOKENS

STYLES = ("qvq", "think", "answer-only")
_TAGGED = re.compile(r"^\s*<answer>(.*?)</answer>\s*$", re.S | re.I)
_ALTERNATIVES = re.compile(r"\s+or\s+|\s+and\s+|或者?|还是|還是|\s*[;；，]\s*|,\s+", re.I)
_BOXED = re.compile(r"\\boxed\{")
_BOXED_ONLY = re.compile(r"^\\boxed\{(.*)\}$", re.S)
_CLOSING = re.compile(r"^[\s.。!！}\]\)$*`\\]*$")


@dataclass(frozen=True)
class ReplyContext:
    style: str = "qvq"                     # how replies should be written: one of STYLES
    think: tuple[str, str] = THINK_TOKENS  # the family's think markers
    budget: int = 512                      # completion token budget
    overlong_cache: int = 64               # overlong: tokens before the budget where the penalty ramps


@dataclass(frozen=True)
class Judged:
    """One reply read once: its extraction, its trace and the hacks it tries."""
    found: Extraction
    answer: str | None
    trace: str
    hacks: tuple[str, ...]


def _boxed_contents(text: str) -> list[str]:
    """The content of every `\\boxed{...}` in `text`, braces balanced."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end():i - 1].strip())
    return out


def _answer_like(part: str) -> bool:
    """A part that could be an answer on its own: a number, an option letter or one word."""
    part = normalize(part)
    return bool(part) and (NUMBER.fullmatch(part) is not None or choice_letter(part) is not None or " " not in part)


def several_answers(answer: str, reply: str) -> bool:
    """Different final answers offered at once: "A or B", "12 or 15", two boxed answers."""
    boxed = {normalize(b) for b in _boxed_contents(reply) if b.strip()}
    if len(boxed) > 1:
        return True
    parts = [p for p in _ALTERNATIVES.split(answer) if p.strip()]
    return len(parts) > 1 and all(_answer_like(p) for p in parts) and len({normalize(p) for p in parts}) > 1


def text_after_answer(reply: str, found: Extraction) -> bool:
    """Whether the reply keeps going after its final answer (beyond closing marks). An
    answer read from the whole text after the think block, or from a whole or closing
    sentence, ends the reply by construction."""
    if found.source in ("whole_reply", "conclusion", "after_think", "none"):
        return False
    segment = reply[found.start:]
    at = segment.find(found.answer)
    return at >= 0 and not _CLOSING.match(segment[at + len(found.answer):])


def _unwrap(answer: str) -> str:
    """An answer without `<answer>` tags or a `\\boxed{}` around it."""
    answer = answer.strip()
    for pattern in (_TAGGED, _BOXED_ONLY):
        if m := pattern.match(answer):
            answer = m.group(1).strip()
    return answer


def judge(reply: str, ctx: ReplyContext, *, hit_budget: bool = False) -> Judged:
    found = extract_answer(reply, ctx.think, cut=hit_budget)
    answer, hacks = (_unwrap(found.answer) if found.answer is not None else None), []
    if found.answer is not None and not normalize(answer):
        hacks.append("empty_answer")
        answer = None
    elif found.answer is None and any(not b for b in _boxed_contents(reply[found.start:])):
        hacks.append("empty_answer")
    if answer is not None:
        if several_answers(answer, reply if found.source == "boxed" else reply[found.start:]):
            hacks.append("several_answers")
        if text_after_answer(reply, found):
            hacks.append("text_after_answer")
    trace = trace_of(reply, found, ctx.think) if answer is not None else reply
    if answer is not None and ctx.style != "answer-only" and not trace.strip():
        hacks.append("no_reasoning")
    return Judged(found, answer, trace, tuple(hacks))


# ---- the rewards --------------------------------------------------------------------------
def correct(reply: str, *, answer: str, ctx: ReplyContext, hit_budget: bool = False, **_) -> float:
    judged = judge(reply, ctx, hit_budget=hit_budget)
    return 1.0 if not judged.hacks and match_answer(judged.answer, answer) is not None else 0.0


def format(reply: str, *, ctx: ReplyContext, hit_budget: bool = False, **_) -> float:  # noqa: A001 (its name)
    judged = judge(reply, ctx, hit_budget=hit_budget)
    if judged.answer is None or judged.hacks:
        return 0.0
    source = judged.found.source
    if ctx.style == "think":
        return 1.0 if source == "after_think" or (ctx.think[1] in reply and judged.found.marked) else 0.0
    if ctx.style == "qvq":
        return 1.0 if source in ("final_marker", "boxed") else 0.0
    return 1.0


def loop(reply: str, **_) -> float:
    return -loop_report(reply)["score"]


def language_mix(reply: str, *, reference_reply: str = "", answer: str = "", ctx: ReplyContext, **_) -> float:
    expected = dominant_script(reference_reply) or dominant_script(answer)
    text = judge(reply, ctx).trace or reply
    return -mix_report(text, expected)["score"]


def overlong(reply: str, *, num_tokens: int, ctx: ReplyContext, **_) -> float:
    start = ctx.budget - ctx.overlong_cache
    if num_tokens <= start:
        return 0.0
    return -min(1.0, (num_tokens - start) / max(1, ctx.overlong_cache))


REWARDS: dict[str, Callable[..., float]] = {"correct": correct, "format": format, "loop": loop,
                                            "language_mix": language_mix, "overlong": overlong}


def reward_function(name: str) -> Callable[..., float]:
    """A reward by name, or a user's own as `module:function`."""
    if name in REWARDS:
        return REWARDS[name]
    module, _, function = name.partition(":")
    if not function:
        raise KeyError(f"unknown reward {name!r} (known: {', '.join(REWARDS)}, or module:function)")
    return getattr(importlib.import_module(module), function)


class BatchReward:
    """A reward as TRL calls it: one list of completions (several prompts x several
    generations, in TRL's order), with the dataset's columns repeated alongside, so each
    completion is scored against its own prompt's gold answer."""

    def __init__(self, name: str, ctx: ReplyContext, prefix: str = "", end_ids: tuple[int, ...] = ()):
        self.fn, self.ctx, self.prefix, self.end_ids = reward_function(name), ctx, prefix, set(end_ids)
        self.__name__ = name.rpartition(":")[2]

    def __call__(self, prompts, completions, completion_ids, answer, reference_reply=None, **_) -> list[float]:
        reference_reply = reference_reply or [""] * len(completions)
        if not len(completions) == len(answer) == len(reference_reply) == len(completion_ids):
            raise ValueError(f"reward {self.__name__}: {len(completions)} completions but {len(answer)} answers")
        return [float(self.fn(self.prefix + _text(c), answer=a, reference_reply=r, num_tokens=len(ids),
                              hit_budget=self.hit_budget(ids), ctx=self.ctx))
                for c, a, r, ids in zip(completions, answer, reference_reply, completion_ids)]

    def hit_budget(self, ids) -> bool:
        """Cut by the budget: as long as it, and not ended by an end-of-turn token."""
        ids = list(ids)
        return len(ids) >= self.ctx.budget and not (ids and int(ids[-1]) in self.end_ids)


def _text(completion) -> str:
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]          # conversational: [{"role": "assistant", "content": ...}]
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content
