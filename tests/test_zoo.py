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
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    assert 1 <= len(new) <= 4
    assert len(new) == 4 or new[-1] in eos, "generation may only stop early on an end token"
    assert not any(t in eos for t in new[:-1]), "nothing is generated after an end token"


def _digest(folder) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def test_zoo_build_is_deterministic(tmp_path, tiny_model):
    from qvq_tune.tiny.zoo import build_tiny
    again = build_tiny("qwen2_vl", tmp_path / "again")
    assert _digest(again) == _digest(tiny_model("qwen2_vl"))
    other_seed = build_tiny("qwen2_vl", tmp_path / "seed1", seed=1)
    assert _digest(other_seed) != _digest(again)


@pytest.mark.parametrize("family", FAMILIES)
def test_zoo_tokenizer_numbers_the_family_added_tokens_in_qwen_order(family, tiny_model):
    from transformers import AutoTokenizer

    from qvq_tune.models.registry import get_family
    fam = get_family(family)
    tok = AutoTokenizer.from_pretrained(tiny_model(family))
    contents = [c for c, _ in fam.added_tokens]
    ids = tok.convert_tokens_to_ids(contents)
    first = ids[0]
    assert ids == list(range(first, first + len(contents))), "consecutive, in the registry's order"
    assert len(tok) == first + len(contents), "the added tokens close the vocabulary"
    decoder = tok.added_tokens_decoder
    assert [(decoder[i].content, decoder[i].special) for i in ids] == list(fam.added_tokens)
    assert tok.eos_token == fam.turn_end and tok.pad_token == fam.text_end
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in fam.control_tokens)
