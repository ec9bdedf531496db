"""Final-answer extraction and matching (data/answers.py) on replies as real models write them.

`tests/data/replies.jsonl` holds the cases, one per line with where it came from: QVQ-72B-
Preview free-form traces (one published output verbatim), QwQ-style "**Final Answer**"
blocks, Qwen2.5-VL plain replies (MathVista's extraction examples), Qwen3-VL Thinking
replies that start inside the trace, multiple choice, units, separators, fractions, boxed
answers mid-reply and at the end, and replies with no answer at all. Each line gives the
expected extracted answer and whether it matches the reference.
"""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction

import pytest

from qvq_tune.data.answers import MARKED, choice_letter, extract_answer, match_answer, normalize, number_in
from qvq_tune.data.reasoning import format_reply

from .conftest import REPO

DATA = REPO / "tests" / "data"
CASES = [json.loads(line) for name in ("replies.jsonl", "replies_choices.jsonl")
         for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


def test_the_cases_cover_every_style():
    styles = Counter(c["style"] for c in CASES)
    assert len(CASES) >= 40
    assert all(styles[s] >= 5 for s in ("qvq", "qwen2_5_vl", "qwen3_vl", "mc")), styles
    assert sum(c["expected"] is None for c in CASES) >= 5                   # no answer at all
    assert any("\\boxed" in c["reply"].split("**Final Answer**")[0] and "**Final Answer**" in c["reply"]
               for c in CASES)                                               # boxed mid-reply, then at the end
    assert all(c["source"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{c['style']}-{i}" for i, c in enumerate(CASES)])
def test_extraction_and_match_on_real_replies(case):
    found = extract_answer(case["reply"])
    assert found.answer == case["expected"], found
    assert (match_answer(found.answer, case["reference"], case.get("choices")) is not None) is case["correct"]


def test_the_misjudged_replies_of_the_issue():
    assert extract_answer("**Final Answer:** 15").answer == "15"
    assert extract_answer("Trace.\n\n**Final Answer:**\n\n\\[ \\boxed{15} \\]").answer == "15"
    assert extract_answer("\\boxed{15}").answer == "15"
    assert extract_answer("trace\n</think>\n\nSo the total is \\boxed{15}.").answer == "15"


def test_the_last_boxed_answer_wins_and_is_marked():
    found = extract_answer("First \\boxed{12}, then the corner adds 3: \\boxed{15}.")
    assert found.answer == "15" and found.source == "boxed" and found.marked
    assert not extract_answer("15").marked and "whole_reply" not in MARKED


def test_a_trace_that_never_closes_has_no_answer_even_if_it_mentions_one():
    assert extract_answer("<think>\nThe answer is probably 4, but let me check").answer is None


@pytest.mark.parametrize("fmt", ["qvq", "think", "answer-only"])
@pytest.mark.parametrize("answer", ["15", "12 A", "yes", "3 red circles"])
def test_extraction_inverts_every_reasoning_format(fmt, answer):
    reply = format_reply("The schematic shows 3 red circles. Each circle costs 5.", answer, fmt)
    assert normalize(extract_answer(reply).answer) == normalize(answer)


@pytest.mark.parametrize("predicted,reference,how", [
    ("15", "15", "exact"),
    ("15.0", "15", "numeric"),
    ("015", "15", "numeric"),
    ("16", "15", None),
    ("1,234,567", "1234567", "numeric"),
    ("\\frac{1}{4}", "0.25", "numeric"),
    ("3/4", "\\dfrac{3}{4}", "exact"),
    ("25%", "25", "numeric"),
    ("\\$1.45", "1.45", "numeric"),
    ("five", "5", "numeric"),
    ("12 a", "12 A", "exact"),            # the reference's unit, case-insensitive
    ("12", "12 A", "numeric"),            # the unit may be left out
    ("12 V", "12 A", None),               # but not replaced by another
    ("12 cm", "12", "numeric"),           # a unit the reference does not carry
    ("3.14159", "3.1416", "numeric"),     # within the relative tolerance
    ("3.2", "3.1416", None),
    ("Yes.", "yes", "exact"),
    ("no", "yes", None),
    ("", "15", None),
    (None, "15", None),
    ("red circles", "red", None),
    ("(B)", "B", "choice"),
    ("B. 12 cm", "B", "choice"),
    ("the correct option is D", "D", "choice"),
    ("A square", "B", None),
    ("A", "B", None),
])
def test_match_answer(predicted, reference, how):
    assert match_answer(predicted, reference) == how


def test_choices_map_option_text_to_letters_both_ways():
    choices = ["12 cm", "15 cm", "18 cm"]
    assert choice_letter("15 cm", choices) == "B" and choice_letter("(C)", choices) == "C"
    assert match_answer("15 cm", "B", choices) == "choice"
    assert match_answer("B", "15 cm", choices) == "choice"
    assert match_answer("12 cm", "B", choices) is None
    assert match_answer("C", "18 cm", {"A": "12 cm", "C": "18 cm"}) == "choice"


def test_number_in_a_sentence_is_the_stated_one():
    assert number_in("The fraction of females is 0.6, which means six out of ten are facing")[0] == Fraction(3, 5)
    assert number_in("Adding up: 1 + 1 + 1 = 3")[0] == 3
    assert number_in("between 2007 and 2008") is None


def test_a_reply_cut_by_the_budget_is_answered_only_where_marked():
    assert extract_answer("There are 3 apples and", cut=True).answer is None
    assert extract_answer("There are 3 apples", cut=False).answer == "There are 3 apples"
    assert extract_answer("3 + 2 = 5.\n\n**Final Answer**\n\n\\[ \\boxed{5} \\]", cut=True).answer == "5"


@pytest.mark.parametrize("reply", [
    "The bar chart has four bars, reaching 30, 45, 25 and 50. So I start with 30 and then",
    "Adding the four bars, 30 + 45 + 25 + 50 =",
    "The total of the four bars is",
    "I count the circles: one in the middle, one at the top,",
    "So the total is...",
    "图中有三个圆，",
    "</think>\n\nThe four bars add up to",
    "Trace.\n\n**Final Answer**\n\nThe total of the four bars is",
    "Looking at the chart, I need to decide which option is the right one.\n\nQ1 is 30, Q2 45. So I add",
])
def test_a_reply_that_stops_mid_sentence_has_no_answer(reply):
    assert extract_answer(reply).answer is None


@pytest.mark.parametrize("reply,answer", [
    ("The switch is on", "The switch is on"), ("A", "A"), ("B-", "B-"), ("C++", "C++"), ("150", "150"),
    ("12 cm", "12 cm"), ("Paris", "Paris"), ("</think>\n\nThe total is 150", "The total is 150"),
    ("I need to work out which option is right. 30 + 45 = 75, so the answer is 75.", "75"),
])
def test_a_finished_reply_keeps_its_answer(reply, answer):
    assert extract_answer(reply).answer == answer
