"""`data build --filter`: the evaluator's reasoning checks as data filters. Distilled traces
that loop, switch language, never conclude or run too long are quarantined, each with its
own reason code; the legitimate ones (a reused formula, a quoted proper noun, a Chinese
dataset) are kept; nothing is dropped silently."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_without_filters_every_trace_is_kept(tiny_model, tmp_path):
    report = build(BuildConfig(input=str(DATA), model=str(tiny_model("qwen2_vl")), out=str(tmp_path / "out"),
                               workers=1))
    assert report["kept"] == len(EXPECTED) + len(KEPT) and report["quarantined"] == 0


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
