"""Load a checkpoint folder's processor and model (bf16/fp32, or 4-bit for QLoRA)."""

from __future__ import annotations

from pathlib import Path

import torch

from .detect import detect

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_processor(model_dir: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None):
    from transformers import AutoProcessor

    from ..data.vision import set_pixel_limits

    detect(model_dir)  # clear errors for missing / unsupported folders
    processor = AutoProcessor.from_pretrained(str(model_dir))
    set_pixel_limits(processor, min_pixels, max_pixels)
    return processor


def bnb_4bit_config(compute_dtype: torch.dtype, quant_type: str = "nf4", double_quant: bool = True):
    from transformers import BitsAndBytesConfig
    # quant_storage must equal the compute dtype for ZeRO-3 to shard the packed weights.
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=compute_dtype,
                              llm_int8_skip_modules=["lm_head", "visual", "merger"])


def load_model(model_dir: str | Path, *, dtype: str = "float32", load_in_4bit: bool = False,
               quant_type: str = "nf4", device_map=None):
    from transformers import AutoModelForImageTextToText

    detect(model_dir)
    torch_dtype = DTYPES[dtype]
    kwargs = {"dtype": torch_dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = bnb_4bit_config(torch_dtype, quant_type)
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), **kwargs)
    if load_in_4bit:
        cpu_safe_4bit(model)
    return model


def cpu_safe_4bit(model) -> None:
    """bitsandbytes on CPU re-packs 4-bit weights for a no-grad fast path after the first
    no-grad call, after which autograd through them breaks; disable that path."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def reset_rope_cache(model) -> None:
    """Qwen VL models cache rope deltas on the inner model during `generate()` (and reuse
    them on a later forward that passes only embeddings); clear them between uses."""
    inner = getattr(getattr(model, "get_base_model", lambda: model)(), "model", None)
    if inner is not None and hasattr(inner, "rope_deltas"):
        inner.rope_deltas = None
