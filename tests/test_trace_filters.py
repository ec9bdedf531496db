"""`data build --filter`: the evaluator's reasoning checks as data filters. Distilled traces
that loop, switch language, never conclude or run too long are quarantined, each with its
own reason code; the legitimate ones (a reused formula, a quoted proper noun, a Chinese
dataset) are kept; nothing is dropped silently."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from qvq_tune.data.build import BuildConfig, build
from qvq_tune.data.quarantine import REASONS
from qvq_tune.data.trace_filters import FILTERS
from qvq_tune.errors import UserError

from .conftest import REPO

DATA = REPO / "tests" / "data" / "distilled_traces.jsonl"
EXPECTED = {"loop": "reasoning_loop", "mixed": "language_mix", "cut_off": "no_answer",
            "unclosed_think": "no_answer", "long_trace": "trace_too_long"}
KEPT = {"good", "proper_noun", "formula", "chinese"}
READ_AS = {"good": "qvq", "cut_off": "answer-only", "unclosed_think": "answer-only"}     # the rest: "field"
# The same question answered in every shape real reasoning models and their data take: plain
# `messages` rows, Qwen-style parts, a think block inline, a trace in `reasoning_content`, QVQ's
# final-answer block inline, a preference pair; each cut off, or not. id -> (read as, cut off?)
SHAPES = REPO / "tests" / "data" / "distilled_shapes.jsonl"
SHAPE_CASES = {
    "bar_cut_plain": ("answer-only", True), "bar_cut_option": ("answer-only", True),
    "think_cut_answer": ("think", True), "field_cut_answer": ("field", True), "qvq_block_cut": ("qvq", True),
    "r1_unclosed": ("answer-only", True), "pair_cut_chosen": ("field", True),
    "qvq_full": ("qvq", False), "qwen25_sentence": ("answer-only", False), "qwen25_number": ("answer-only", False),
    "qwen3_thinking": ("think", False), "r1_field": ("field", False), "switch_on": ("answer-only", False),
    "pair_ok": ("field", False),
}


def _ids(path):
    return [json.loads(line)["record"]["id"] for line in path.read_text().splitlines()]


def test_every_filter_has_its_documented_reason_code():
    assert set(FILTERS.values()) <= set(REASONS)


def test_filters_quarantine_the_failing_traces_each_with_its_reason(tiny_model, tmp_path):
    report = build(BuildConfig(input=str(DATA), model=str(tiny_model("qwen2_vl")), out=str(tmp_path / "out"),
                               workers=1, filters=tuple(FILTERS), max_trace_tokens=200))
    rows = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert {r["record"]["id"]: r["reason"] for r in rows} == EXPECTED
    assert all("--filter" in r["message"] and r["line"] for r in rows)
    assert report["input_records"] == len(EXPECTED) + len(KEPT) == report["kept"] + report["quarantined"]
    from qvq_tune.data.dataset import load_samples
    assert set(load_samples(tmp_path / "out")["id"]) == KEPT


def _shapes() -> list:
    from qvq_tune.data.messages import Origin
    from qvq_tune.data.readers import ReaderOptions, parse
    records = [json.loads(line) for line in SHAPES.read_text().splitlines()]
    return [(r["id"], parse(r, Origin(str(SHAPES), i + 1), ReaderOptions())) for i, r in enumerate(records)]


def test_no_answer_judges_the_reply_whatever_its_shape_as_eval_scores_it():
    """A reply cut off mid-sentence is `no_answer` however the input gave its trace, and the
    evaluator's scoring of the same reply says the same (one scoring code path)."""
    from qvq_tune.data.messages import read_as
    from qvq_tune.data.quarantine import RecordError
    from qvq_tune.data.trace_filters import check_replies, written_reply
    from qvq_tune.eval.scoring import score_reply

    examples = _shapes()
    assert [i for i, _ in examples] == list(SHAPE_CASES)
    for record_id, example in examples:
        style, cut = SHAPE_CASES[record_id]
        assert read_as(example) == style, record_id
        try:
            check_replies(example, ("no-answer",), len)
            verdict = None
        except RecordError as exc:
            verdict = exc.code
            assert f"read as {style}" in exc.message
        assert verdict == ("no_answer" if cut else None), record_id
        reply = example.turns[-1] if hasattr(example, "turns") else example.chosen
        assert score_reply(written_reply(reply), "150")["diagnostics"]["no_answer"] is cut, record_id


def test_the_build_report_and_quarantine_say_how_each_reply_was_read(tiny_model, tmp_path):
    report = build(BuildConfig(input=str(SHAPES), model=str(tiny_model("qwen2_vl")), out=str(tmp_path / "out"),
                               workers=1, filters=("no-answer",)))
    rows = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert {r["record"]["id"]: (r["read_as"], r["reason"]) for r in rows} == {
        i: (style, "no_answer") for i, (style, cut) in SHAPE_CASES.items() if cut}
    styles = Counter(style for style, _ in SHAPE_CASES.values())
    assert report["reasoning_read_as"] == dict(sorted(styles.items()))
    assert report["kept"] == sum(not cut for _, cut in SHAPE_CASES.values())


def test_without_filters_every_trace_is_kept(tiny_model, tmp_path):
    report = build(BuildConfig(input=str(DATA), model=str(tiny_model("qwen2_vl")), out=str(tmp_path / "out"),
                               workers=1))
    assert report["kept"] == len(EXPECTED) + len(KEPT) and report["quarantined"] == 0
    ids = [json.loads(line)["id"] for line in DATA.read_text().splitlines()]
    assert report["reasoning_read_as"] == dict(sorted(Counter(READ_AS.get(i, "field") for i in ids).items()))


@pytest.mark.parametrize("only", ["loops", "no-answer"])
def test_one_filter_catches_only_its_own_problem(only, tiny_model, tmp_path):
    build(BuildConfig(input=str(DATA), model=str(tiny_model("qwen2_vl")), out=str(tmp_path / "out"),
                      workers=1, filters=(only,)))
    rows = (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()
    reasons = {json.loads(line)["reason"] for line in rows}
    assert reasons == {FILTERS[only]}


def test_an_unknown_filter_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="unknown --filter loop.*choose from loops"):
        BuildConfig(input=str(DATA), model="qwen2_vl", out=str(tmp_path / "o"), filters="loop")
    out = subprocess.run([sys.executable, "-m", "qvq_tune", "data", "build", "--input", str(DATA), "--model",
                          "qwen2_vl", "--out", str(tmp_path / "o"), "--filter", "loops,typo"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "unknown --filter typo" in out.stderr
