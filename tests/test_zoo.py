"""Tiny zoo checkpoints: standard HF layout, offline load, deterministic, forward + generate."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from PIL import Image

from .conftest import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_zoo_checkpoint_loads_and_runs(family, tiny_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    path = tiny_model(family)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", "qvq_tune.json"):
        assert (path / f).is_file(), f
    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__ == json.loads((path / "config.json").read_text())["architectures"][0]
    tok = proc.tokenizer
    for special in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|video_pad|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1, special
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    enc = proc(text=[text], images=[Image.new("RGB", (112, 112), (255, 0, 0))], return_tensors="pt")
    n_image_tokens = int((enc["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_image_tokens == int(enc["image_grid_thw"].prod()) // 4 == 16
    with torch.no_grad():
        logits = model(**enc).logits
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert logits.shape[-1] == model.config.text_config.vocab_size
    assert out.shape[1] == enc["input_ids"].shape[1] + 4 or int(out[0, -1]) in model.generation_config.eos_token_id


def _digest(folder) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def test_zoo_build_is_deterministic_and_fast(tmp_path, tiny_model):
    import time
    from qvq_tune.models.zoo import build_tiny
    t = time.time()
    again = build_tiny("qwen2_vl", tmp_path / "again")
    assert time.time() - t < 30
    assert _digest(again) == _digest(tiny_model("qwen2_vl"))
    other_seed = build_tiny("qwen2_vl", tmp_path / "seed1", seed=1)
    assert _digest(other_seed) != _digest(again)


def test_zoo_tokenizer_keeps_qwen_token_order(tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model("qwen3_vl"))
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>",
                                     "<|video_pad|>", "<tool_call>", "<think>", "</think>"])
    assert ids == sorted(ids) and ids[1] == ids[0] + 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
