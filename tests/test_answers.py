"""Final-answer extraction and matching (eval/answers.py) on replies in each style we train."""

from __future__ import annotations

import pytest

from qvq_tune.data.reasoning import format_reply
from qvq_tune.eval.answers import answers_match, extract_answer, normalize


@pytest.mark.parametrize("reply,expected", [
    # QVQ style, as the renderer writes it (trace, marker, boxed answer)
    ("The schematic shows 3 red triangles. 3 x 5 = 15.\n\n**Final Answer**\n\n\\[ \\boxed{15} \\]", "15"),
    ("trace\n\n**Final Answer:** \\[ \\boxed{12 A} \\]", "12 a"),
    ("trace **Final Answer** \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("trace\n**final answer**\n\nThe pump is broken.", "the pump is broken"),
    # think tags
    ("<think>\nlet me count: 2 circles\n</think>\n\n4", "4"),
    ("<think>x</think>Yes.", "yes"),
    # plain "Final answer:" lines
    ("I see 3 triangles. Each triangle costs 5. 3 x 5 = 15. Final answer: 15", "15"),
    ("Counting...\nFinal Answer: 7 pumps.", "7 pumps"),
    # nothing marked: the whole reply
    ("red", "red"),
    ("  Blue.  ", "blue"),
    ("$42$", "42"),
    ("\\text{no}", "no"),
])
def test_extract_answer(reply, expected):
    assert extract_answer(reply) == expected


@pytest.mark.parametrize("fmt", ["qvq", "think", "answer-only"])
@pytest.mark.parametrize("answer", ["15", "12 A", "yes", "3 red circles"])
def test_extraction_inverts_every_reasoning_format(fmt, answer):
    reply = format_reply("The schematic shows 3 red circles. Each circle costs 5.", answer, fmt)
    assert extract_answer(reply) == normalize(answer)


@pytest.mark.parametrize("predicted,reference,match", [
    ("15", "15", True),
    ("15.0", "15", True),
    ("015", "15", True),
    ("16", "15", False),
    ("12 a", "12 A", True),          # the reference's unit, case-insensitive
    ("12", "12 A", True),            # the unit may be left out
    ("12 v", "12 A", False),         # but not replaced by another
    ("Yes.", "yes", True),
    ("no", "yes", False),
    ("", "15", False),
    ("red circles", "red", False),
])
def test_answers_match(predicted, reference, match):
    assert answers_match(predicted, reference) is match
