"""Merging a QLoRA adapter into the weights it was trained against (`--base-weights as-trained`).

A QLoRA adapter is trained on the base's 4-bit (NF4) rounding of its language-model
layers and learns to compensate it; added to the unquantised weights it drifts (the merge
proof's `vs_4bit_base_plus_adapter` shows how far). Here each weight that the 4-bit base
held in NF4 is rounded exactly as bitsandbytes rounded it at training time (same quant
type, block size, double quantisation and load dtype), dequantised, and the LoRA product
is added to that in fp32; the result is written in the export dtype (bf16). The merged
model is a plain bf16 checkpoint that computes what the 4-bit model + adapter computed.

Which weights were 4-bit is decided by transformers' own rules (`should_convert_module`
and the quantiser's skip list) on an empty (meta) copy of the model, with the family's
skip modules the trainer used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.loading import DTYPES
from .names import NameIndex

BLOCKSIZE = 64      # bitsandbytes' Params4bit default, as the trainer's loader leaves it


@dataclass(frozen=True)
class Rounding:
    names: frozenset[str]          # base tensor names (as on disk) that the 4-bit model held in NF4 / FP4
    quant_type: str = "nf4"
    double_quant: bool = True
    dtype: str = "float32"         # the dtype the trainer loaded the base in (what bitsandbytes quantised)

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """The weight as the 4-bit layer computed with it, in fp32."""
        import bitsandbytes.functional as bnbf
        weight = tensor.to(DTYPES[self.dtype]).contiguous()
        packed, state = bnbf.quantize_4bit(weight, blocksize=BLOCKSIZE, compress_statistics=self.double_quant,
                                           quant_type=self.quant_type, quant_storage=weight.dtype)
        return bnbf.dequantize_4bit(packed, state).to(torch.float32)


def four_bit_modules(base_dir: str | Path, skip_modules: tuple[str, ...]) -> list[str]:
    """Module names that loading `base_dir` in 4-bit with `skip_modules` turns into 4-bit
    linear layers (transformers' rules, applied to an empty copy of the model)."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    config = AutoConfig.from_pretrained(str(base_dir))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    skip = HfQuantizer.get_modules_to_not_convert(model, list(skip_modules),
                                                  getattr(model, "_keep_in_fp32_modules", None))
    return [name for name, module in model.named_modules()
            if type(module) is torch.nn.Linear and should_convert_module(name, skip)]


def rounding_for(base_dir: str | Path, skip_modules: tuple[str, ...], base_names, aliases,
                 quantized: dict) -> Rounding:
    """The rounding a QLoRA run's base went through: `quantized` holds the run's 4-bit
    settings (`quant_type`, `double_quant`, `dtype`)."""
    index = NameIndex(base_names, aliases)
    names = set()
    for module in four_bit_modules(base_dir, skip_modules):
        target = index.resolve(f"{module}.weight")
        if target is None:
            raise RuntimeError(f"4-bit layer {module} has no weight in the base checkpoint")
        names.add(target)
    return Rounding(frozenset(names), quantized["quant_type"], bool(quantized["double_quant"]), quantized["dtype"])
