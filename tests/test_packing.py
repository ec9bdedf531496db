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
    from qvq_tune.train.config import recipe_from_dict
    from qvq_tune.train.run import train
    recipe = recipe_from_dict({"name": "packed", "model": str(tiny_model("qwen2_vl")), "output_dir": str(tmp_path),
                               "data": {"train": str(built_train["train"]), "packing": True},
                               "optim": {"max_steps": 3, "per_device_batch_size": 4, "logging_steps": 1}})
    report = train(recipe, in_process=True)
    rows = [r for r in read_metrics(recipe.run_dir / "metrics.jsonl") if "padding_share" in r]
    assert len(rows) == 3 and all(r["padding_share"] == 0 for r in rows)
    assert all(r["samples_per_s"] > 0 for r in rows)
    assert report["padding_share"] == 0 and report["train_loss_last"] < report["train_loss_first"]


def test_dpo_refuses_packing(tmp_path):
    from qvq_tune.errors import UserError
    from qvq_tune.train.config import recipe_from_dict
    with pytest.raises(UserError, match="data.packing"):
        recipe_from_dict({"objective": "dpo", "data": {"train": str(tmp_path), "packing": True}})
