"""Padding-free packing for multimodal RoPE: a packed row computes what the padded batch does."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def varied(tiny_model, tmp_path_factory):
    """Samples of different lengths, with one, two or no images, built for the tiny qwen2_vl."""
    from PIL import Image

    from qvq_tune.data.build import BuildConfig, build
    root = tmp_path_factory.mktemp("varied")
    for name, colour in (("red", (220, 40, 40)), ("blue", (40, 80, 220))):
        Image.new("RGB", (112, 112), colour).save(root / f"{name}.png")
    rows = [{"images": ["red.png"], "question": "Colour?", "answer": "red"},
            {"question": "What is two plus two?", "reasoning": "Two and two make four.", "answer": "4"},
            {"images": ["red.png", "blue.png"], "question": "Colours of the two images, in order?",
             "reasoning": "The first is red. The second is blue.", "answer": "red, blue"},
            {"images": ["blue.png"], "question": "Describe the image in detail please.",
             "reasoning": "It is a plain square filled with one colour, a medium blue.", "answer": "blue"}]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build(BuildConfig(input=str(root / "rows.jsonl"), model=str(tiny_model("qwen2_vl")), out=str(root / "built"),
                      reasoning="qvq", workers=1))
    return root / "built"


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_row_equals_the_padded_batch(tiny_model, varied):
    from qvq_tune.data.collate import VisionCollator
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.models.loading import load_model, load_processor
    from qvq_tune.models.registry import get_family
    from qvq_tune.train.packing import restart_positions_per_sample
    path = tiny_model("qwen2_vl")
    processor = load_processor(path)
    samples = [dict(s) for s in load_samples(varied)]
    padded = VisionCollator(processor)(samples)
    packed = VisionCollator(processor, packing=True)(samples)
    assert packed["input_ids"].shape == (1, sum(len(s["input_ids"]) for s in samples))
    assert "attention_mask" not in packed and padded["attention_mask"].float().mean() < 1, "the padded batch pads"
    assert torch.equal(packed["image_grid_thw"], padded["image_grid_thw"])
    model = load_model(path).train()
    loss_a, grads_a = _loss_and_grads(model, padded)
    handle = restart_positions_per_sample(model, get_family("qwen2_vl"))
    loss_b, grads_b = _loss_and_grads(model, packed)
    handle.remove()
    assert loss_b == pytest.approx(loss_a.item(), rel=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
    # Without per-sample positions and masks the row would differ: the check can fail.
    loss_c, _ = _loss_and_grads(model, {k: v for k, v in packed.items() if k != "position_ids"})
    assert abs(loss_c.item() - loss_a.item()) > 1e-3


def test_packed_training_has_no_padding(tmp_path, tiny_model, built_train):
    from qvq_tune.train.callbacks import read_metrics
    from qvq_tune.recipe import recipe_from_dict
    from qvq_tune.train.run import train
    recipe = recipe_from_dict({"name": "packed", "model": str(tiny_model("qwen2_vl")), "output_dir": str(tmp_path),
                               "data": {"train": str(built_train["train"]), "packing": True},
                               "optim": {"max_steps": 3, "per_device_batch_size": 4, "logging_steps": 1},
                               "loss": {"lm_head": "fused"}})    # TRL's head logs its own num_tokens
    report = train(recipe, in_process=True)
    rows = [r for r in read_metrics(recipe.run_dir / "metrics.jsonl") if "padding_share" in r]
    assert len(rows) == 3 and all(r["padding_share"] == 0 for r in rows)
    # Each step packs 4 samples into one row: the step's tokens (TRL's own running count) per
    # sample is what our two rates, measured over the same seconds, say it is.
    seen = [0] + [r["num_tokens"] for r in rows]
    for k, r in enumerate(rows):
        per_sample = (seen[k + 1] - seen[k]) / 4
        assert r["tokens_per_s"] / r["samples_per_s"] == pytest.approx(per_sample, rel=0.01), k
    assert report["padding_share"] == 0 and report["train_loss_last"] < report["train_loss_first"]


def test_dpo_refuses_packing(tmp_path):
    from qvq_tune.errors import UserError
    from qvq_tune.recipe import recipe_from_dict
    with pytest.raises(UserError, match="data.packing"):
        recipe_from_dict({"objective": "dpo", "data": {"train": str(tmp_path), "packing": True}})


# ---- every family's multimodal RoPE, with videos ------------------------------------------
@pytest.fixture(scope="module")
def video_rows(tmp_path_factory):
    """Images, two videos (3 s at 4 fps, sampled at 2 fps; 1 s at 8 fps, where the 4-frame
    minimum makes the sampled rate 4 fps, so Qwen2.5-VL's seconds per grid step is 0.5, not
    the 1.0 it assumes without one), a text-only sample, side by side in one micro-batch."""
    from .conftest import MediaFiles
    root = tmp_path_factory.mktemp("video_rows")
    files = MediaFiles(root)
    files.image("red.png")
    files.video("slow.mp4", frames=12, fps=4)
    files.video("fast.mp4", frames=8, fps=8, w=64, h=96)
    rows = [{"video": "slow.mp4", "question": "What moves?", "reasoning": "Noise flickers.", "answer": "noise"},
            {"images": ["red.png"], "question": "Colour?", "answer": "red"},
            {"video": "fast.mp4", "question": "How many scenes?", "answer": "one"},
            {"question": "What is two plus two?", "answer": "4"},
            {"images": ["red.png"], "video": "slow.mp4", "question": "Same noise as the video?", "answer": "no"}]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_each_sample_of_a_packed_row_sees_what_it_sees_alone(family, tiny_model, video_rows, tmp_path):
    """Per-sample logits of a packed row (images, videos, text only) equal each sample run alone,
    for every multimodal RoPE: Qwen2-VL's, Qwen2.5-VL's time-aligned video positions,
    Qwen3-VL's per-frame video grids with timestamps between frames."""
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.data.collate import VisionCollator
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.data.video import load_video, video_kwargs
    from qvq_tune.models.loading import load_model, load_processor
    from qvq_tune.models.registry import get_family
    from qvq_tune.train.packing import restart_positions_per_sample
    path = tiny_model(family)
    build(BuildConfig(input=str(video_rows / "rows.jsonl"), model=str(path), out=str(tmp_path / "built"),
                      reasoning="qvq", workers=1))
    samples = [dict(s) for s in load_samples(tmp_path / "built")]
    assert [len(s["videos"] or []) for s in samples] == [1, 0, 1, 0, 1]
    processor = load_processor(path)
    for s in samples:          # alone, a video sample gets every input the model's own processor gives
        if s["videos"]:
            batch = VisionCollator(processor)([s])
            video = load_video(s["videos"][0])
            enc = processor(text=[processor.video_token], videos=[video.frames], return_tensors="pt",
                            **video_kwargs(processor.video_processor, [video]))
            for key in set(enc) & set(processor.model_input_names) - {"input_ids", "attention_mask",
                                                                        "mm_token_type_ids"}:
                torch.testing.assert_close(batch[key], enc[key], msg=key)
    model = load_model(path).eval()
    with torch.no_grad():
        alone = [model(**VisionCollator(processor)([s]), use_cache=False).logits[0] for s in samples]
        handle = restart_positions_per_sample(model, get_family(family))
        packed = model(**VisionCollator(processor, packing=True)(samples), use_cache=False).logits[0]
        handle.remove()
    starts = [0]
    for s in samples:
        starts.append(starts[-1] + len(s["input_ids"]))
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        torch.testing.assert_close(packed[a:b], alone[i], rtol=1e-4, atol=1e-4, msg=f"sample {i}")
