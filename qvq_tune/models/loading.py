"""Load a checkpoint folder's processor and model (bf16/fp32, or 4-bit for QLoRA).

Also owns the processor's pixel settings (`min_pixels` / `max_pixels` of images and video
frames), which the builder, the trainers and the exporter must all apply the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .detect import detect
from .registry import ModelFamily, get_family

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pixel_limits(image_processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of an image or video processor."""
    size = image_processor.size
    lo = getattr(size, "shortest_edge", None) or size["shortest_edge"]
    hi = getattr(size, "longest_edge", None) or size["longest_edge"]
    return int(lo), int(hi)


def processor_pixel_limits(processor) -> dict[str, tuple[int, int]]:
    """(min_pixels, max_pixels) of each of a processor's image and video processors, by attribute."""
    return {name: pixel_limits(sub) for name in ("image_processor", "video_processor")
            if (sub := getattr(processor, name, None)) is not None}


def restore_pixel_limits(processor, limits: dict[str, tuple[int, int]]) -> None:
    """Put back limits read by `processor_pixel_limits` (e.g. the checkpoint's own, before a
    dataset's overrides), so settings of one dataset never carry over to the next."""
    for name, (lo, hi) in limits.items():
        getattr(processor, name).size = {"shortest_edge": lo, "longest_edge": hi}


def set_pixel_limits(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Override the processor's min/max pixels (images and video frames)."""
    if min_pixels is None and max_pixels is None:
        return
    for sub in (processor.image_processor, getattr(processor, "video_processor", None)):
        if sub is None:
            continue
        lo, hi = pixel_limits(sub)
        sub.size = {"shortest_edge": min_pixels or lo, "longest_edge": max_pixels or hi}


def load_processor(model_dir: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None):
    from transformers import AutoProcessor

    detect(model_dir)  # clear errors for missing / unsupported folders
    processor = AutoProcessor.from_pretrained(str(model_dir))
    set_pixel_limits(processor, min_pixels, max_pixels)
    return processor


def bnb_4bit_config(family: ModelFamily, compute_dtype: torch.dtype, quant_type: str = "nf4",
                    double_quant: bool = True):
    from transformers import BitsAndBytesConfig
    # quant_storage must equal the compute dtype for ZeRO-3 to shard the packed weights.
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=compute_dtype,
                              llm_int8_skip_modules=list(family.quant_skip_modules))


def load_model(model_dir: str | Path, *, dtype: str = "float32", load_in_4bit: bool = False,
               quant_type: str = "nf4", double_quant: bool = True, device_map=None):
    from transformers import AutoModelForImageTextToText

    family = get_family(detect(model_dir).family)
    torch_dtype = DTYPES[dtype]
    kwargs = {"dtype": torch_dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = bnb_4bit_config(family, torch_dtype, quant_type, double_quant)
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), **kwargs)
    if load_in_4bit:
        cpu_safe_4bit(model)
    return model


def quantised_modules(model) -> list[str]:
    """Names of the 4-bit / 8-bit linear layers of a loaded model."""
    return [name for name, module in model.named_modules()
            if type(module).__name__ in ("Linear4bit", "Linear8bitLt")]


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
