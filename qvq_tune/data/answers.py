"""Final answers: extracted from replies the way Qwen's models write them, then matched.

`extract_answer(reply)` finds the final answer of a reply, whichever way it was written:
- Qwen3-VL Thinking: the trace between the family's think markers, then the answer
  (the opening marker is usually in the prompt, so only the closing one appears); a
  trace that never closes has no answer;
- QVQ-72B-Preview: a free-form trace, then `**Final Answer**` (with or without a colon,
  the answer on the same or the next lines, often `\\[ \\boxed{...} \\]`), or "the final
  answer is ...";
- `\\boxed{}` anywhere (the last one wins); "the answer is (B)", "Answer: 15";
- Qwen2.5-VL plain replies: a short reply is its own answer; a long one without any
  marker is answered only by a closing "Therefore, ..." sentence.
`Extraction.source` says which rule found it; `start` is where the answer part begins
(what comes before it is the trace). A reply cut off by the token budget is answered only
by a marked answer; so is one that visibly stops mid-sentence (`ends_mid_sentence`: on a
comma, an operator, "and", "the", "because"...), and unmarked text that stops so (a
whole reply, what follows the think block or the final-answer marker) is never an answer.
A question ("which option is correct", "what the answer is") is not an answer phrase.

`match_answer(predicted, reference, choices)` compares exactly after normalising LaTeX,
markdown and case; as numbers (thousands separators, fractions, percentages, currency,
number words, a unit the reference also carries, relative tolerance); and as
multiple-choice letters (a letter, "(B)", "option B", or a choice's own text).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from ..models.registry import THINK_TOKENS
from .reasoning import extract_boxed

# Where an answer came from. MARKED sources are explicit final answers; the others are
# read from unmarked text, so a reply that hit the token budget with only those is truncated.
SOURCES = ("after_think", "final_marker", "boxed", "answer_phrase", "conclusion", "whole_reply", "none")
MARKED = frozenset({"after_think", "final_marker", "boxed", "answer_phrase"})
SHORT_REPLY_CHARS = 300          # an unmarked reply this short, in one paragraph, is its own answer

_FINAL = re.compile(r"\*\*[ \t]*final answer[ \t]*(?:[:：][ \t]*\*\*|\*\*[ \t]*[:：]?)"
                    r"|#{1,6}[ \t]*final answer\b[ \t]*[:：]?"
                    r"|\bfinal answer[ \t]*[:：]"
                    r"|\bfinal answer (?:is|would be|should be)\b[ \t]*:?", re.I)
_PHRASE = re.compile(r"(?:\b(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s+(?:is|should\s+be|would\s+be)"
                     r"|^[ \t]*(?:\*\*)?answer(?:\*\*)?[ \t]*[:：](?:\*\*)?)[ \t]*:?", re.I | re.M)
_ASKING = re.compile(r"\b(?:which|what|whichever|whatever|whether|if)\s*$", re.I)   # "which option is ..."
_CONCLUDE = re.compile(r"^(?:therefore|thus|hence|so|in conclusion|in summary|overall)\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+(?=\S)|\n+")
_WRAPPERS = (("\\[", "\\]"), ("\\(", "\\)"), ("$$", "$$"), ("$", "$"), ("**", "**"), ("*", "*"))


@dataclass(frozen=True)
class Extraction:
    answer: str | None       # the final answer as written (markup stripped), None when there is none
    source: str              # one of SOURCES
    start: int = 0           # offset in the reply where the answer part begins (the trace is before it)

    @property
    def marked(self) -> bool:
        return self.source in MARKED


# Words a finished sentence does not end on (articles, conjunctions, prepositions that take
# an object, copulas, determiners; lower case, so a choice letter "A" is not one), and
# characters that announce more to come.
_DANGLING = frozenset(
    "a an the and or but nor then because since if than while whereas although though unless of to for from "
    "with into between through via per is are was were be been being my our their its your we".split())
_OPEN_END = (",", ";", ":", "(", "[", "{", "–", "—", "=", "×", "...", "…", "，", "、", "：", "；", "（")
_LAST_WORDS = re.compile(r"(\S+)\s+([^\W\d_]+)$")


def ends_mid_sentence(text: str) -> bool:
    """Whether `text` visibly stops mid-sentence: on a comma, colon, open bracket, operator or
    ellipsis, or on a word no finished sentence ends with ("... with 30 and then", "... the").
    A reply that stops so was cut off (by a budget, or by whoever made the data), whatever
    its length."""
    body = text.rstrip().removesuffix("**").rstrip()
    if body.endswith(_OPEN_END):
        return True
    last = _LAST_WORDS.search(body[-60:])
    return bool(last and last.group(2) in _DANGLING)


def extract_answer(reply: str, think: tuple[str, str] = THINK_TOKENS, *, cut: bool = False) -> Extraction:
    """The final answer of `reply`. A reply `cut` by the token budget, or that stops
    mid-sentence, has one only where it is marked: its unmarked text is unfinished, not an
    answer."""
    found = _extract(reply, think)
    cut = cut or ends_mid_sentence(reply)
    return found if found.marked or not cut else Extraction(None, "none", len(reply))


def _extract(reply: str, think: tuple[str, str]) -> Extraction:
    open_, close = think
    cut = reply.rfind(close)
    if cut >= 0:
        start = cut + len(close)
        tail = reply[start:]
        if not tail.strip():
            return Extraction(None, "none", start)
        found = _from_text(tail, whole=True)
        if found.source in ("whole_reply", "conclusion", "none"):
            if ends_mid_sentence(tail):
                return Extraction(None, "none", len(reply))
            return Extraction(clean(tail), "after_think", start)
        return Extraction(found.answer, found.source, start + found.start)
    if open_ in reply:                  # cut off while still thinking
        return Extraction(None, "none", len(reply))
    return _from_text(reply)


def _from_text(text: str, whole: bool = False) -> Extraction:
    last = None
    for last in _FINAL.finditer(text):
        pass
    if last is not None:
        answer = _first_answer(text[last.end():])
        if answer:
            return Extraction(answer, "final_marker", last.start())
    boxed_at = text.rfind("\\boxed{")
    if boxed_at >= 0 and (boxed := extract_boxed(text)):
        return Extraction(clean(boxed), "boxed", boxed_at)
    last = None
    for phrase in _PHRASE.finditer(text):
        if not _ASKING.search(text[max(0, phrase.start() - 12):phrase.start()]):
            last = phrase
    if last is not None:
        answer = clean(_SENTENCE_END.split(text[last.end():].strip(), 1)[0])
        if answer:
            return Extraction(answer, "answer_phrase", last.start())
    body = text.strip()
    if ends_mid_sentence(body):
        return Extraction(None, "none", len(text))
    if whole or (len(body) <= SHORT_REPLY_CHARS and "\n\n" not in body):
        return Extraction(clean(body) or None, "whole_reply" if body else "none", text.find(body[:1]))
    sentence = _SENTENCE_END.split(body)[-1].strip()
    if _CONCLUDE.match(sentence) and sentence[-1:] in ".!。)":
        return Extraction(clean(sentence), "conclusion", text.rfind(sentence))
    return Extraction(None, "none", len(text))


def _first_answer(tail: str) -> str | None:
    """What follows a final-answer marker: its boxed content, else its first non-empty line."""
    boxed = extract_boxed(tail)
    if boxed:
        return clean(boxed)
    for line in tail.splitlines():
        line = _SENTENCE_END.split(line.replace("**", "").strip(), 1)[0]
        if line.strip():
            return None if ends_mid_sentence(line) else clean(line)
    return None


def clean(text: str) -> str:
    """Strip surrounding whitespace, math / bold wrappers and a closing full stop."""
    text = text.strip()
    changed = True
    while changed and text:
        changed = False
        for left, right in _WRAPPERS:
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text, changed = text[len(left):-len(right)].strip(), True
        if text.endswith((".", "。")) and not text.endswith(".."):
            text, changed = text[:-1].rstrip(), True
    return text


# ---- normalising and matching ----------------------------------------------------------
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mathbf|operatorname|textit)\s*\{([^{}]*)\}")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_SPACES = {"\\,": " ", "\\;": " ", "\\:": " ", "\\!": "", "\\ ": " ", "~": " ", "\\%": "%",
                 "\\$": "$", "\\left": "", "\\right": "", "^\\circ": "°", "^{\\circ}": "°", "\\times": "×",
                 "\\cdot": "·", "−": "-", "^{2}": "²", "^2": "²", "^{3}": "³", "^3": "³"}


def normalize(text: str | None) -> str:
    """Comparable form: LaTeX text / fractions unwrapped, markup and case dropped."""
    if text is None:
        return ""
    text = _LATEX_TEXT.sub(r"\1", text)
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    for old, new in _LATEX_SPACES.items():
        text = text.replace(old, new)
    text = clean(text.replace("**", ""))
    return re.sub(r"\s+", " ", text).strip().lower()


_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
               "ninety": 90, "hundred": 100})
_NUM = (r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|[-+]?\.\d+|\b(?:"
        + "|".join(sorted(_WORDS, key=len, reverse=True)) + r")\b")
_CURRENCY = r"[$€£¥]?"
_UNIT = r"(?:\s*(%|°|[^\W\d_][\w°²³/.-]*))?"
NUMBER = re.compile(rf"{_CURRENCY}({_NUM}){_UNIT}")
_ONLY_NUMBER = re.compile(rf"^{_CURRENCY}({_NUM}){_UNIT}$")
_STATED = re.compile(rf"(?:\bis|\bare|\bwas|\bwere|\bequals?|=|≈|[:：])\s+(?:approximately\s+|about\s+|around\s+)?"
                     rf"{_CURRENCY}({_NUM}){_UNIT}")


def number_value(token: str) -> Fraction | None:
    token = token.replace(",", "").replace(" ", "")
    if token in _WORDS:
        return Fraction(_WORDS[token])
    try:
        if "/" in token:
            num, den = token.split("/")
            return Fraction(num) / Fraction(den) if Fraction(den) else None
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def _unit(unit: str | None) -> str:
    unit = (unit or "").rstrip(".")
    return unit[:-1] if len(unit) > 2 and unit.endswith("s") else unit


def number_in(text: str) -> tuple[Fraction, str] | None:
    """The number an answer states, with its unit: the whole answer when it is a number,
    else the number after the last "is / are / = / :", else its only number."""
    text = normalize(text)
    for pattern in (_ONLY_NUMBER.match(text), _last(_STATED.finditer(text))):
        if pattern is not None and (value := number_value(pattern.group(1))) is not None:
            return value, _unit(pattern.group(2))
    found = [m for m in NUMBER.finditer(text) if number_value(m.group(1)) is not None]
    if len(found) == 1:
        return number_value(found[0].group(1)), _unit(found[0].group(2))
    return None


def _last(matches):
    last = None
    for last in matches:
        pass
    return last


_LETTER_ALONE = re.compile(r"^(?:\(([A-J])\)|([A-J])(?:$|[.):：]))")
_LETTER_NAMED = re.compile(r"\b(?:option|choice|answer)\s*(?:is\s*)?[:：]?\s*\(?((?-i:[A-J]))\)?(?!\w)", re.I)


def choice_letter(text: str | None, choices: list[str] | dict | None = None) -> str | None:
    """The multiple-choice letter an answer names ("B", "(B)", "B. 12 cm", "option B"),
    or the letter of the choice whose text it equals."""
    if not text:
        return None
    plain = clean(text.replace("**", ""))
    if m := _LETTER_ALONE.match(plain) or _LETTER_NAMED.search(plain):
        return next(g for g in m.groups() if g)
    for letter, option in _choice_items(choices):
        if normalize(option) == normalize(plain):
            return letter
    return None


def _choice_items(choices) -> list[tuple[str, str]]:
    if isinstance(choices, dict):
        return [(str(k).upper(), str(v)) for k, v in choices.items()]
    return [(chr(ord("A") + i), str(c)) for i, c in enumerate(choices or [])]


def match_answer(predicted: str | None, reference: str, choices=None, rel_tol: float = 1e-4) -> str | None:
    """How `predicted` matches `reference`: "exact", "choice", "numeric", or None (no match)."""
    if predicted is None or not predicted.strip():
        return None
    p, r = normalize(predicted), normalize(reference)
    if p == r:
        return "exact"
    ref_letter = choice_letter(reference, choices) if (choices or _LETTER_ALONE.match(clean(reference))) else None
    if ref_letter is not None:
        return "choice" if choice_letter(predicted, choices) == ref_letter else None
    pn, rn = number_in(p), number_in(r)
    if pn is None or rn is None:
        return None
    (pv, pu), (rv, ru) = pn, rn
    if pu and ru and pu != ru and "%" not in (pu, ru):
        return None
    close = pv == rv or math.isclose(float(pv), float(rv), rel_tol=rel_tol, abs_tol=1e-12)
    return "numeric" if close else None

