"""Files published by other projects build end to end, nothing quarantined (tests/data/SOURCES.md).

The records are transcribed unchanged; the media they name are stand-ins written at the
same relative paths (the originals are photos and renders too large to commit).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qvq_tune.data.build import BuildConfig, build
from qvq_tune.data.dataset import load_samples
from qvq_tune.models.loading import load_processor

DATA = Path(__file__).resolve().parent / "data"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_copy(src: Path, root: Path, tiny_model, family="qwen2_vl", **kw) -> dict:
    """Copy `src` into `root` (the image root) and build it; nothing may be quarantined."""
    if src.parent != root:
        shutil.copy(src, root / src.name)
    report = build(BuildConfig(input=str(root / src.name), model=str(tiny_model(family)), out=str(root / "out"),
                               workers=1, **kw))
    assert report["quarantined"] == 0, (root / "out" / "quarantine.jsonl").read_text()
    assert report["kept"] == report["input_records"] == len(records(src))
    return report


def replies(sample: dict, tokenizer) -> str:
    return tokenizer.decode([t for t, lab in zip(sample["input_ids"], sample["labels"]) if lab != -100])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_llamafactory_v1_multimodal_demo(tiny_model, media_files, family):
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        media_files.image(f"data/mllm_demo_data/{name}", 120, 90)
    build_copy(DATA / "llamafactory_v1" / "v1_multimodal_demo.jsonl", media_files.root, tiny_model, family,
               reasoning="answer-only")
    rows = load_samples(media_files.root / "out").to_list()
    assert [len(r["images"]) for r in rows] == [2, 1, 1]          # the first asks about 1.jpg twice
    tokenizer = load_processor(tiny_model(family)).tokenizer
    text = replies(rows[0], tokenizer)
    assert "Kane and Gretzka" in text and "celebrating on the soccer field" in text and "Who are they" not in text


def test_llamafactory_v1_sft_and_dpo_demos(tiny_model, tmp_path):
    (tmp_path / "sft").mkdir()
    build_copy(DATA / "llamafactory_v1" / "v1_sft_demo.jsonl", tmp_path / "sft", tiny_model)
    rows = load_samples(tmp_path / "sft" / "out").to_list()
    assert all(r["loss_weights"] is None for r in rows)           # user 0.0 / assistant 1.0: plain labels
    (tmp_path / "dpo").mkdir()
    report = build_copy(DATA / "llamafactory_v1" / "v1_dpo_demo.jsonl", tmp_path / "dpo", tiny_model)
    assert report["kept_preference"] == 2
    pref = load_samples(tmp_path / "dpo" / "out", "preference")[1]
    assert load_processor(tiny_model("qwen2_vl")).tokenizer.decode(pref["chosen_input_ids"]).startswith(
        "**Final Answer**\n\n\\[ \\boxed{D: considerate} \\]")


def test_llamafactory_v1_video_with_loss_weights(tiny_model, media_files):
    from .test_readers import v1_video_record
    media_files.image("p/a.jpg")
    media_files.video("p/v.mp4", frames=8)
    record = json.dumps(v1_video_record(0.0, 2.0)).replace('"/p/', '"p/')      # paths under the image root
    path = media_files.write("v1_video.jsonl", record + "\n")
    build_copy(media_files.root / path, media_files.root, tiny_model, reasoning="answer-only", max_frames=4)
    [row] = load_samples(media_files.root / "out").to_list()
    assert (len(row["images"]), len(row["videos"])) == (1, 1)
    assert replies(row, load_processor(tiny_model("qwen2_vl")).tokenizer) == "Four.<|im_end|>"
    assert {w for w, lab in zip(row["loss_weights"], row["labels"]) if lab != -100} == {2.0}


def test_ms_swift_conversation_rows(tiny_model, tmp_path):
    build_copy(DATA / "ms_swift" / "sharegpt.jsonl", tmp_path, tiny_model, reasoning="answer-only")
    rows = load_samples(tmp_path / "out").to_list()
    tokenizer = load_processor(tiny_model("qwen2_vl")).tokenizer
    assert replies(rows[2], tokenizer) == "BBBBB<|im_end|>DDDDD<|im_end|>FFFFF<|im_end|>"
    assert "<|im_start|>system\n00000<|im_end|>" in tokenizer.decode(rows[0]["input_ids"])


def test_counting_set_with_integer_answers_keeps_every_record(tiny_model, media_files):
    src = DATA / "r1v" / "superclevr_test200_counting_problems.jsonl"
    rows = records(src)
    assert all(isinstance(r["ground_truth"], int) for r in rows)
    for r in rows:
        media_files.image(r["image_path"], 96, 64)
    report = build_copy(src, media_files.root, tiny_model, reasoning="answer-only")
    assert report["field_aliases"] == {"answer=ground_truth, images=image_path": len(rows)}
    tokenizer = load_processor(tiny_model("qwen2_vl")).tokenizer
    built = load_samples(media_files.root / "out").to_list()
    assert [replies(s, tokenizer) for s in built] == [f"{r['ground_truth']}<|im_end|>" for r in rows]


def test_geoqa_prompts_with_text_answers(tiny_model, media_files):
    src = DATA / "r1v" / "geoqa_test_prompts.jsonl"
    for r in records(src):
        media_files.image(r["image_path"], 80, 80)
    report = build_copy(src, media_files.root, tiny_model, family="qwen3_vl", reasoning="answer-only")
    assert report["field_aliases"] == {"answer=ground_truth, images=image_path": 3}
