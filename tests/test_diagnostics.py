"""Reasoning diagnostics (data/diagnostics.py): each check flags the traces it must and leaves
alone the ones it must not (a legitimately repeated formula, an English trace quoting one
Chinese proper noun, a real QVQ-72B-Preview trace that double-checks itself)."""

from __future__ import annotations

import json

import pytest

from qvq_tune.data.diagnostics import (answer_consistency, diagnose, dominant_script, language_mix,
                                       loop_report, script_of)

from .conftest import REPO

REPLIES = [json.loads(line) for line in (REPO / "tests" / "data" / "replies.jsonl").read_text().splitlines()]
PELICANS = REPLIES[0]["reply"]          # QVQ-72B-Preview's published pelican trace
QWQ_TAIL = REPLIES[1]["reply"]          # a QwQ-style solution ending, many short repeated lines

FORMULA = ("Triangle 1 has base 4 and height 3. Area = 1/2 × base × height = 1/2 × 4 × 3 = 6.\n"
           "Triangle 2 has base 6 and height 2. Area = 1/2 × base × height = 1/2 × 6 × 2 = 6.\n"
           "Triangle 3 has base 5 and height 4. Area = 1/2 × base × height = 1/2 × 5 × 4 = 10.\n"
           "So the total area is 6 + 6 + 10 = 22.\n\n**Final Answer**\n\n\\[ \\boxed{22} \\]")
SENTENCE_LOOP = ("There are three red triangles in the top row. Wait, let me recount the red triangles. "
                 "One, two, three. So there are three. Wait, let me recount the red triangles. One, two, three. "
                 "Hmm, maybe one is orange. Wait, let me recount the red triangles. One, two, three. "
                 "Wait, let me recount the red triangles.")
BLOCK_LOOP = ("So I'm looking at this schematic. " + "Alternatively, maybe the valve on the left is actually a pump, "
              "so the total would change, but let me check the legend again. " * 5)
STUTTER = "The total is 15, wait, " + "wait, " * 40
PROPER_NOUN = ("The sign above the gate reads 北京 (Beijing), and the skyline matches the photos of Beijing "
               "I know. There are 3 lions in front of the gate.\n\n**Final Answer**\n\n\\[ \\boxed{3} \\]")
SWITCHED = ("I count the circles in the image: there are three red ones on the left. "
            "所以红色的圆一共有三个，没有其他颜色。 So the answer is 3.\n\n"
            "**Final Answer**\n\n\\[ \\boxed{3} \\]")
CHINESE = "图中有三个红色的圆形和两个蓝色的正方形，所以一共有五个图形。\n\n**Final Answer**\n\n\\[ \\boxed{5} \\]"


@pytest.mark.parametrize("trace", [SENTENCE_LOOP, BLOCK_LOOP, STUTTER], ids=["sentence", "block", "stutter"])
def test_loops_are_flagged_with_their_repeating_span(trace):
    loop = loop_report(trace)
    assert loop["flagged"] and loop["score"] >= 0.2 and loop["repeats"] >= 3
    assert loop["span"] and loop["span"].strip(" ,.").lower() in trace.lower()


@pytest.mark.parametrize("trace", [FORMULA, PELICANS, QWQ_TAIL, "15"], ids=["formula", "pelicans", "qwq", "short"])
def test_legitimate_repetition_is_not_a_loop(trace):
    assert not loop_report(trace)["flagged"], loop_report(trace)


def test_loop_score_grows_with_the_repetition():
    once = "Wait, let me check the valves on the left side again. " * 3
    many = "Wait, let me check the valves on the left side again. " * 12
    assert loop_report("I count 3 valves. " * 2 + once)["score"] < loop_report(many)["score"]


def test_language_mixing_is_flagged_with_the_offending_span():
    mix = language_mix(SWITCHED)
    assert mix["flagged"] and mix["expected"] == "latin" and mix["score"] > 0
    assert mix["spans"] == ["所以红色的圆一共有三个，没有其他颜色"]


def test_an_english_trace_quoting_one_chinese_proper_noun_is_not_mixed():
    mix = language_mix(PROPER_NOUN)
    assert not mix["flagged"] and mix["spans"] == ["北京"] and 0 < mix["char_share"] < 0.05


def test_the_expected_script_decides_what_is_foreign():
    assert not language_mix(CHINESE)["flagged"] and dominant_script(CHINESE) == "cjk"
    assert language_mix(CHINESE, expected="latin")["flagged"]              # a Chinese reply to an English question
    english_in_chinese = "图中有三个圆形。 Let me count them again to be sure. 一共三个。"
    assert language_mix(english_in_chinese, expected="cjk")["flagged"]


def test_greek_letters_and_math_are_neutral():
    assert script_of("π") is None and script_of("θ") is None and script_of("7") is None
    assert not language_mix("A = π × r² = 9π and θ = 30°, so sin θ = 0.5.")["flagged"]


def test_truncation_means_the_budget_was_hit_without_a_final_answer():
    cut = "So I'm looking at this schematic. Let me count the valves: one, two, and"
    assert diagnose(cut, num_tokens=16, hit_budget=True)["truncated"]
    assert diagnose(cut, num_tokens=16, hit_budget=True)["flags"] == ["truncated", "no_answer"]
    answered = "3 x 5 = 15.\n\n**Final Answer**\n\n\\[ \\boxed{15} \\]"
    assert not diagnose(answered, num_tokens=16, hit_budget=True)["truncated"]
    short = diagnose("So the total", num_tokens=3, hit_budget=False)
    assert not short["truncated"] and short["tokens"] == 3


def test_answer_consistency():
    assert diagnose(PELICANS)["consistent"] is True                      # "Five pelicans in total." then 5
    assert diagnose(QWQ_TAIL)["consistent"] is True
    conflict = "I count 3 red triangles, so the total is 12.\n\n**Final Answer**\n\n\\[ \\boxed{15} \\]"
    assert diagnose(conflict)["consistent"] is False and "inconsistent" in diagnose(conflict)["flags"]
    assert answer_consistency("So the answer is option B.", "C") is False
    assert answer_consistency("Only the third shape has four sides, option C.", "C") is True
    assert diagnose("15")["consistent"] is None                          # no trace to compare with
    assert answer_consistency("The rectangle is 4 by 2.", "8") is None  # the trace never concludes


def test_a_clean_trace_raises_no_flag():
    assert diagnose(PELICANS, num_tokens=700, hit_budget=False)["flags"] == []
