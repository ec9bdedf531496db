"""The architecture of known checkpoints, as data, for planning without the weights.

`KNOWN_SHAPES` maps `FAMILY-SIZE` names (`qwen2_vl-72b` is QVQ-72B-Preview's shape) to the
sizes in their published `config.json`; `meta_model(config)` builds the model on the meta
device, so parameter counts per part come from transformers' own module tree, exactly,
with no memory used.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .registry import FAMILIES, get_family

_QWEN2_VISION = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16)          # Qwen2-VL
_QWEN25_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                      fullatt_block_indexes=[7, 15, 23, 31], window_size=112)     # Qwen2.5-VL


def _text(hidden, layers, inter, heads, kv, vocab=152064, tied=False):
    return dict(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})


# family-size -> (family, text config, vision config), from the checkpoints' config.json.
KNOWN_SHAPES: dict[str, tuple[str, dict, dict]] = {
    "qwen2_vl-2b": ("qwen2_vl", _text(1536, 28, 8960, 12, 2, 151936, True), {**_QWEN2_VISION, "hidden_size": 1536}),
    "qwen2_vl-7b": ("qwen2_vl", _text(3584, 28, 18944, 28, 4), {**_QWEN2_VISION, "hidden_size": 3584}),
    "qwen2_vl-72b": ("qwen2_vl", _text(8192, 80, 29568, 64, 8), {**_QWEN2_VISION, "hidden_size": 8192}),
    "qwen2_5_vl-3b": ("qwen2_5_vl", _text(2048, 36, 11008, 16, 2, 151936, True),
                      {**_QWEN25_VISION, "out_hidden_size": 2048}),
    "qwen2_5_vl-7b": ("qwen2_5_vl", _text(3584, 28, 18944, 28, 4), {**_QWEN25_VISION, "out_hidden_size": 3584}),
    "qwen2_5_vl-32b": ("qwen2_5_vl", _text(5120, 64, 27648, 40, 8), {**_QWEN25_VISION, "out_hidden_size": 5120}),
    "qwen2_5_vl-72b": ("qwen2_5_vl", _text(8192, 80, 29568, 64, 8), {**_QWEN25_VISION, "out_hidden_size": 8192}),
}
ALIASES = {"qvq-72b": "qwen2_vl-72b", "qvq-72b-preview": "qwen2_vl-72b"}


def config_for(model: str):
    """A transformers config for a checkpoint folder or a known `FAMILY-SIZE` name; and its family."""
    import transformers
    name = ALIASES.get(model.lower(), model.lower())
    if name in KNOWN_SHAPES:
        family, text, vision = KNOWN_SHAPES[name]
        fam = get_family(family)
        config_cls = getattr(transformers, fam.model_class.replace("ForConditionalGeneration", "Config"))
        return config_cls(text_config=text, vision_config=vision,
                          tie_word_embeddings=text["tie_word_embeddings"]), fam
    path = Path(model)
    if (path / "config.json").is_file():
        from .detect import family_of_config
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        fam = family_of_config(raw, str(path / "config.json"))
        return transformers.AutoConfig.from_pretrained(str(path)), fam
    raise UserError(f"{model!r} is neither a checkpoint folder nor a known size "
                    f"({', '.join(sorted(KNOWN_SHAPES) + sorted(ALIASES))})", key="model")


def meta_model(config):
    """The model on the meta device: every parameter's shape, no memory."""
    import torch
    from transformers import AutoModelForImageTextToText
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


__all__ = ["KNOWN_SHAPES", "FAMILIES", "config_for", "meta_model"]
