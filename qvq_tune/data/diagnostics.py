"""Reasoning diagnostics on one reply: loops, language mixing, truncation, consistency.

Pure text functions, shared by the evaluator (every generated trace) and the data build's
`--filter` (distilled training traces), so both judge a trace the same way:
- `loop_report`: how much of a reply is verbatim repetition. Two signals, the larger
  wins: a block of tokens repeated back to back (at least 3 copies of a short block, or
  2 of a block of 20+ tokens), and a sentence of 4+ words said 3+ times anywhere. A
  formula reused with different numbers is neither, so it is not a loop.
- `language_mix`: letters in a script other than the expected one (CJK in an English
  trace, English in a Chinese one), with the offending spans; a CJK character and a
  Latin word are one token each. A quoted name (a span shorter than `MIX_MIN_SPAN`
  tokens) does not flag a trace; a switched clause, or many short switches, does.
  Greek letters and math symbols are neutral.
- `answer_consistency`: for replies with a trace and a separate final answer (think
  markers, QVQ's final-answer marker), whether the trace's closing sentences state that
  answer, or its last explicit conclusion states another.
- `diagnose`: all of them for a reply, plus its length and whether it was truncated
  (hit the token budget without an explicit final answer).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

import numpy as np

from ..models.registry import THINK_TOKENS
from .answers import NUMBER, Extraction, choice_letter, extract_answer, normalize, number_in, number_value

LOOP_THRESHOLD = 0.2        # share of tokens that are repeats
LOOP_MIN_RUN = 8            # repeated tokens a back-to-back repetition needs
LOOP_LONG_BLOCK = 20        # a block this long repeated twice in a row is a loop
LOOP_MAX_PERIOD = 256       # longest repeating block looked for, in tokens
SENTENCE_MIN_WORDS = 4
SENTENCE_MIN_COPIES = 3
MIX_MIN_SPAN = 4            # tokens in one span of the unexpected script that flag a trace
MIX_MAX_SHARE = 0.1         # or this share of all tokens, over at least 2 x MIX_MIN_SPAN tokens
SPANS_SHOWN = 5
TRACED = frozenset({"after_think", "final_marker"})     # sources whose trace is apart from the answer

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+|[^\w\s]", re.UNICODE)
_SENTENCES = re.compile(r"(?<=[.!?。！？])\s*|\n+")
_SCRIPTS = {"CJK": "cjk", "HIRAGANA": "cjk", "KATAKANA": "cjk", "HANGUL": "cjk", "LATIN": "latin",
            "FULLWIDTH": "latin", "CYRILLIC": "cyrillic", "ARABIC": "arabic", "HEBREW": "hebrew",
            "DEVANAGARI": "devanagari", "THAI": "thai"}
_NEUTRAL = {"GREEK", "MATHEMATICAL", "MODIFIER", "DOUBLE-STRUCK", "SCRIPT", "BLACK-LETTER", "PLANCK"}


def tokens(text: str) -> list[re.Match]:
    """Word tokens: runs of letters / digits, single CJK characters, single symbols."""
    return list(_TOKEN.finditer(text))


# ---- loops --------------------------------------------------------------------------------
def loop_report(text: str) -> dict:
    """{"score", "flagged", "span", "repeats"}: share of tokens that repeat earlier text."""
    toks = tokens(text)
    n = len(toks)
    if n < LOOP_MIN_RUN:
        return {"score": 0.0, "flagged": False, "span": None, "repeats": 0}
    tandem, t_span, t_repeats = _tandem_repeats(toks, text)
    sentence, s_span, s_repeats = _repeated_sentences(text, n)
    score, span, repeats = (tandem, t_span, t_repeats) if tandem >= sentence else (sentence, s_span, s_repeats)
    return {"score": round(float(score), 4), "flagged": bool(score >= LOOP_THRESHOLD), "span": span,
            "repeats": int(repeats)}


def _tandem_repeats(toks: list[re.Match], text: str) -> tuple[float, str | None, int]:
    """Share of tokens inside back-to-back repetitions of one block, the longest such block
    and how many copies of it there are."""
    ids = {}
    seq = np.array([ids.setdefault(t.group().lower(), len(ids)) for t in toks])
    n = len(seq)
    covered = np.zeros(n, dtype=bool)
    best = (0, None, 0)
    for p in range(1, min(LOOP_MAX_PERIOD, n // 2) + 1):
        eq = np.concatenate(([0], (seq[p:] == seq[:-p]).astype(np.int8), [0]))
        edges = np.diff(eq)
        for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            run = e - s                      # seq[s : s + p + run] is one block repeated
            if run < LOOP_MIN_RUN or not (run >= 2 * p or p >= LOOP_LONG_BLOCK and run >= p):
                continue
            covered[s + p:s + p + run] = True
            if run > best[0]:
                best = (run, text[toks[s].start():toks[s + p - 1].end()], (run + p) // p)
    return float(covered.sum()) / n, best[1], int(best[2])


def _repeated_sentences(text: str, n_tokens: int) -> tuple[float, str | None, int]:
    """Share of tokens in the 2nd and later copies of sentences said 3+ times."""
    sentences = [s.strip() for s in _SENTENCES.split(text) if s and s.strip()]
    counts = Counter(" ".join(s.lower().split()) for s in sentences)
    repeated, best = 0, (0, None)
    for sentence, count in counts.items():
        length = len(tokens(sentence))
        if count >= SENTENCE_MIN_COPIES and length >= SENTENCE_MIN_WORDS:
            repeated += (count - 1) * length
            if count > best[0]:
                best = (count, sentence)
    return repeated / n_tokens, best[1], best[0]


# ---- language mixing ---------------------------------------------------------------------
@lru_cache(maxsize=1 << 16)
def script_of(ch: str) -> str | None:
    """The writing system of a letter; None for digits, punctuation, Greek and math letters."""
    if not ch.isalpha():
        return None
    if ord(ch) < 0x250:
        return "latin"
    first = unicodedata.name(ch, "?").split(" ")[0]
    return None if first in _NEUTRAL else _SCRIPTS.get(first, "other")


def script_counts(text: str) -> Counter:
    """Letters per writing system (`script_of`) in `text`."""
    counts = Counter()
    for ch, n in Counter(text).items():
        if script := script_of(ch):
            counts[script] += n
    return counts


def dominant_script(text: str) -> str | None:
    counts = script_counts(text)
    return counts.most_common(1)[0][0] if counts else None


def language_mix(text: str, expected: str | None = None) -> dict:
    """{"score", "flagged", "expected", "char_share", "spans"}: tokens in an unexpected script."""
    scripts = script_counts(text)
    expected = expected or (scripts.most_common(1)[0][0] if scripts else None)
    toks = tokens(text)
    n_letters = sum(scripts.values())
    foreign_letters = n_letters - scripts.get(expected, 0)
    if not foreign_letters:
        return {"score": 0.0, "flagged": False, "expected": expected, "char_share": 0.0, "spans": []}
    spans, run = [], []                      # runs of tokens in an unexpected script
    n_foreign = 0
    for t in toks:
        script = next((s for s in map(script_of, t.group()) if s), None)
        if script is None:
            continue
        if script != expected:
            n_foreign += 1
            if run and script != run[-1][1]:
                spans.append(run)
                run = []
            run.append((t, script))
        elif run:
            spans.append(run)
            run = []
    if run:
        spans.append(run)
    n_words = sum(1 for t in toks if any(map(script_of, t.group())))
    share = n_foreign / n_words if n_words else 0.0
    longest = max((len(r) for r in spans), default=0)
    shown = sorted(spans, key=len, reverse=True)[:SPANS_SHOWN]
    flagged = longest >= MIX_MIN_SPAN or (n_foreign >= 2 * MIX_MIN_SPAN and share >= MIX_MAX_SHARE)
    return {"score": round(share, 4), "flagged": flagged,
            "expected": expected, "char_share": round(foreign_letters / n_letters, 4) if n_letters else 0.0,
            "spans": [text[r[0][0].start():r[-1][0].end()] for r in shown]}


# ---- answer consistency --------------------------------------------------------------------
_LETTER_IN = re.compile(r"\(([A-J])\)|\\boxed\{([A-J])\}|\b(?:option|choice|answer)\s+(?:is\s+)?\(?([A-J])\b")
_EXPLICIT = re.compile(r"\\boxed\{|\b(?:answer|option|choice)\s+(?:is|should be|would be)\b"
                       r"|\b(?:so|therefore|thus|hence)\b", re.I)
CONSISTENCY_SENTENCES = 3       # closing sentences of a trace searched for its answer


def _stated(sentence: str, letter: str | None) -> set:
    """The choice letters (when the final answer is one) or the numbers a sentence states."""
    if letter is not None:
        return {g for m in _LETTER_IN.finditer(sentence) for g in m.groups() if g}
    return {value for m in NUMBER.finditer(normalize(sentence)) if (value := number_value(m.group(1))) is not None}


def answer_consistency(trace: str | None, final: str | None, choices=None) -> bool | None:
    """Whether a trace's closing sentences state the reply's final answer: True when one of
    the last sentences that state a number (or a choice letter, for a multiple-choice
    answer) states it; False when the trace's last explicit conclusion ("so ...",
    "the answer is ...", a boxed answer) states something else; None when neither (or a
    textual answer the closing sentences do not repeat)."""
    if not trace or not final:
        return None
    letter = choice_letter(final, choices)
    number = None if letter else number_in(final)
    sentences = [s.strip() for s in _SENTENCES.split(trace) if s and s.strip()]
    if letter is None and number is None:
        closing = normalize(" ".join(sentences[-CONSISTENCY_SENTENCES:]))
        return True if normalize(final) in closing else None
    target = letter if letter is not None else number[0]
    stating = [(s, found) for s in sentences if (found := _stated(s, letter))]
    if any(target in found for _, found in stating[-CONSISTENCY_SENTENCES:]):
        return True
    explicit = [found for s, found in stating if _EXPLICIT.search(s)]
    return False if explicit and target not in explicit[-1] else None


# ---- one reply ------------------------------------------------------------------------------
def trace_of(reply: str, found: Extraction, think: tuple[str, str] = THINK_TOKENS) -> str:
    """The reasoning before the final answer (without think markers); "" for a bare answer."""
    if found.source == "whole_reply":
        return ""
    head = reply[:found.start]
    for marker in think:
        head = head.replace(marker, "")
    return head.strip()


def diagnose(reply: str, found: Extraction | None = None, *, num_tokens: int | None = None,
             hit_budget: bool | None = None, expected_script: str | None = None, choices=None,
             think: tuple[str, str] = THINK_TOKENS) -> dict:
    """Every diagnostic of one reply, JSON-ready; `flags` names the ones that fired."""
    found = found or extract_answer(reply, think, cut=bool(hit_budget))
    trace = trace_of(reply, found, think)
    diag = {
        "tokens": num_tokens,
        "chars": len(reply),
        "hit_budget": hit_budget,
        "no_answer": found.answer is None,
        "truncated": bool(hit_budget) and not found.marked,
        "loop": loop_report(reply),
        "language_mix": language_mix(reply, expected_script),
        "consistent": answer_consistency(trace, found.answer, choices) if found.source in TRACED else None,
    }
    diag["flags"] = [name for name, fired in (
        ("truncated", diag["truncated"]), ("no_answer", diag["no_answer"]), ("loop", diag["loop"]["flagged"]),
        ("language_mix", diag["language_mix"]["flagged"]), ("inconsistent", diag["consistent"] is False)) if fired]
    return diag
