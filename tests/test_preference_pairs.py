"""Preference pairs cut where they differ (Step-DPO style), and the synthetic defects the
demo's DPO stage removes."""

from __future__ import annotations

import json

import pytest

from qvq_tune.data.reasoning import cut_pair
from qvq_tune.synth.tasks import taught_defects

CLEAN = "The schematic shows 3 red circles. Each circle is a valve. A valve costs 2. 3 x 2 = 6."
LOOP = ("The schematic shows 3 red circles. Wait, let me look again. The schematic shows 3 red circles. "
        "Each circle is a valve. A valve costs 2. 3 x 2 = 6.")
MIXED = "示意图显示 3 red circles. 每个 circle is a valve. A valve costs 2. 3 x 2 = 6."
WRONG = "The schematic shows 2 red circles. Each circle is a valve. A valve costs 2. 2 x 2 = 4."


@pytest.mark.parametrize("rejected,mode,shared,parts", [
    (LOOP, "step", "The schematic shows 3 red circles.", [" Each circle is a valve.", " Wait, let me look again."]),
    (LOOP, "divergence", "The schematic shows 3 red circles.", [" Each circle is a valve.", " Wait, let me look again."]),
    (MIXED, "step", "", ["The schematic shows 3 red circles.", "示意图显示 3 red circles."]),
    (WRONG, "step", "", ["The schematic shows 3 red circles.", "The schematic shows 2 red circles."]),
    (WRONG, "divergence", "The schematic shows", [" 3 red circles.", " 2 red circles."]),
    (WRONG, "none", "", [CLEAN, WRONG]),
    (CLEAN, "step", "", [CLEAN, CLEAN]),
])
def test_cut_pair(rejected, mode, shared, parts):
    assert cut_pair(CLEAN, rejected, mode) == (shared, parts)
    got_shared, got = cut_pair(CLEAN, rejected, mode)
    assert CLEAN.startswith(got_shared + got[0]) and rejected.startswith(got_shared + got[1])


def test_a_reply_that_stops_against_one_that_goes_on():
    end = "<|im_end|>"
    shared, parts = cut_pair(CLEAN + end, CLEAN + " Let me check once more." + end, "step")
    assert shared == CLEAN and parts == [end, " Let me check once more."]


def test_built_pairs_put_the_shared_start_in_the_prompt(tiny_model, tmp_path):
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.models.loading import load_processor
    (tmp_path / "img.png").write_bytes(b"")
    from PIL import Image
    Image.new("RGB", (112, 112), "red").save(tmp_path / "img.png")
    record = {"images": ["img.png"], "question": "What do the parts cost?",
              "chosen": {"reasoning": CLEAN, "answer": "6"}, "rejected": {"reasoning": LOOP, "answer": "6"}}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(record) + "\n")
    tok = load_processor(tiny_model("qwen2_vl")).tokenizer
    rows = {}
    for cut in ("none", "step"):
        build(BuildConfig(input=str(tmp_path / "pairs.jsonl"), model=str(tiny_model("qwen2_vl")),
                          out=str(tmp_path / cut), reasoning="qvq", pair_cut=cut, workers=1))
        rows[cut] = load_samples(tmp_path / cut, "preference")[0]
    whole, cut = rows["none"], rows["step"]
    assert tok.decode(cut["prompt_input_ids"]).endswith("assistant\n" + "The schematic shows 3 red circles.")
    assert cut["prompt_input_ids"][:len(whole["prompt_input_ids"])] == whole["prompt_input_ids"]
    assert tok.decode(cut["chosen_input_ids"]) == " Each circle is a valve."
    assert tok.decode(cut["rejected_input_ids"]) == " Wait, let me look again."
    assert tok.decode(whole["chosen_input_ids"]).endswith("<|im_end|>")


def test_synthetic_defects_keep_the_answer_and_are_detected(tmp_path):
    from qvq_tune.synth.generate import SynthConfig, generate
    generate(SynthConfig(train=400, validation=0, test=20, defect_rate=0.3, dpo_kinds=("looping", "language_mixed")),
             tmp_path, progress=False)
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    defective = [r for r in train if "defect" in r["meta"]]
    assert 0.22 < len(defective) / len(train) < 0.38          # 30% of 400, binomial sd 2.3 points
    assert {r["meta"]["defect"] for r in defective} == {"looping", "language_mixed"}
    for r in train:
        assert taught_defects(r["reasoning"]) == ({r["meta"]["defect"]} if "defect" in r["meta"] else set())
    test = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert not any("defect" in r["meta"] or taught_defects(r["reasoning"]) for r in test)
    pairs = [json.loads(line) for line in (tmp_path / "dpo_train.jsonl").read_text().splitlines()]
    assert {p["rejected_kind"] for p in pairs} == {"looping", "language_mixed"}
    for p in pairs:
        assert not taught_defects(p["chosen"]["reasoning"]) and taught_defects(p["rejected"]["reasoning"])
        assert p["chosen"]["answer"] == p["rejected"]["answer"]
