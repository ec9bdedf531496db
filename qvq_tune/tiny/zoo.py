"""The tiny model zoo: small checkpoints of every family, built offline and deterministically.

`build_tiny(family, out)` writes a standard Hugging Face folder (config, safetensors
weights, tokenizer with the real Qwen added tokens and the family's chat template,
image and video processor configs, generation config, and a LICENSE of the zoo's choosing:
Apache-2.0 unless the spec names another) that `AutoProcessor` and
`AutoModelForImageTextToText` load. Weights are random (seeded); `tiny/pretrain.py`
pre-trains the qwen2_vl one into the embedded default that can see. Every family-specific
value (classes, added tokens, vision layout, markers) comes from the family record.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from .. import presets
from ..models.detect import IDENTITY_FILE
from ..models.registry import QVQ_SYSTEM_PROMPT, ModelFamily, chat_template_text, get_family
from ..models.tiny_shapes import TinySpec
from ..paths import atomic_dir, write_json_atomic, write_text_atomic

QVQ_TEMPLATE = "qvq.jinja"


def _text_config(fam: ModelFamily, s: TinySpec, vocab: int, ids: dict) -> dict:
    rope = {"rope_type": "default", "rope_theta": s.rope_theta, "mrope_section": list(s.mrope_section)}
    if fam.mrope_interleaved:
        rope["mrope_interleaved"] = True
    cfg = dict(vocab_size=vocab, hidden_size=s.hidden, num_hidden_layers=s.layers,
               num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, head_dim=s.head_dim,
               intermediate_size=s.intermediate, initializer_range=s.initializer_range,
               max_position_embeddings=4096, tie_word_embeddings=False, rope_parameters=rope, **ids)
    if fam.is_moe:
        cfg.update(num_experts=s.moe_experts, num_experts_per_tok=s.moe_top_k,
                   moe_intermediate_size=s.moe_intermediate, decoder_sparse_step=1)
    return cfg


def tiny_config(fam: ModelFamily, s: TinySpec, tokenizer):
    import transformers
    ids = dict(bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(fam.turn_end),
               pad_token_id=tokenizer.convert_tokens_to_ids(fam.text_end))
    config_cls = getattr(transformers, fam.model_class.replace("ForConditionalGeneration", "Config"))
    tok_ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in (
        ("image_token_id", fam.image_token), ("video_token_id", fam.video_token),
        ("vision_start_token_id", fam.vision_start), ("vision_end_token_id", fam.vision_end))}
    cfg = config_cls(text_config=_text_config(fam, s, len(tokenizer), ids),
                     vision_config=fam.tiny_vision_config(s, fam), tie_word_embeddings=False,
                     **tok_ids, **ids)
    cfg.initializer_range = s.initializer_range
    return cfg


def tiny_processor(fam: ModelFamily, s: TinySpec, tokenizer, chat_template: str):
    import transformers
    pixels = s.image_side ** 2
    image_proc = getattr(transformers, fam.image_processor_class)(
        size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=fam.patch_size,
        merge_size=fam.merge_size, temporal_patch_size=fam.temporal_patch_size)
    video_proc = getattr(transformers, fam.video_processor_class)(
        size={"shortest_edge": pixels // 4, "longest_edge": pixels}, patch_size=fam.patch_size,
        merge_size=fam.merge_size, temporal_patch_size=fam.temporal_patch_size)
    proc_cls = getattr(transformers, fam.processor_class)
    return proc_cls(image_processor=image_proc, tokenizer=tokenizer, video_processor=video_proc,
                    chat_template=chat_template)


def build_tiny(family: str, out: str | Path, *, spec: TinySpec | None = None, seed: int = 0,
               name: str | None = None, checkpoint: str | None = None) -> Path:
    """Write a tiny random-weight checkpoint of `family` to `out` (atomically)."""
    import transformers

    from ..synth.vocabulary import tokenizer_corpus
    from .tokenizer import build_tokenizer

    fam = get_family(family)
    spec = spec or TinySpec()
    if spec.image_side % fam.pixel_factor:
        spec = replace(spec, image_side=(spec.image_side // fam.pixel_factor + 1) * fam.pixel_factor)
    template_name = spec.chat_template or fam.chat_template
    template = chat_template_text(template_name)
    tokenizer = build_tokenizer(fam, tokenizer_corpus(), spec.bpe_vocab, chat_template=template)
    processor = tiny_processor(fam, spec, tokenizer, template)
    config = tiny_config(fam, spec, tokenizer)
    torch.manual_seed(seed)
    model = getattr(transformers, fam.model_class)(config).eval()
    model.generation_config = transformers.GenerationConfig(
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id, do_sample=False, max_new_tokens=128)
    qvq = template_name == QVQ_TEMPLATE
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_text_atomic(tmp / "LICENSE", presets.license_text(spec.license))
        write_json_atomic(tmp / IDENTITY_FILE, {
            "checkpoint": checkpoint or name or f"qvq-tune/tiny-{fam.name}", "tiny": True,
            "family": fam.name, "license": spec.license,
            "reasoning_style": "qvq" if qvq else fam.reasoning_style,
            "system_prompt": spec.system_prompt if spec.system_prompt is not None else (
                QVQ_SYSTEM_PROMPT if qvq else fam.default_system_prompt),
            "chat_template": template_name, "seed": seed, "spec": asdict(spec),
            "num_parameters": sum(p.numel() for p in model.parameters()),
        })
    return out
