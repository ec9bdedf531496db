"""Faster kernels the recipe switches on (`kernels`).

- Liger kernels (Triton: GPU only) for the families that have them (`kernels.liger:
  true`): fused RMSNorm, LayerNorm, SwiGLU and multimodal RoPE. They patch transformers'
  module classes, so `apply_liger` runs before the model is loaded. Liger's fused linear
  cross-entropy is left off: TRL's trainers already score tokens through their own fused
  LM head, which would replace it.
- The vision tower's patch embedding as one matrix multiply (`kernels.patch_embed_matmul`,
  on by default): Qwen's patch embedding is an `nn.Conv3d` whose stride equals its kernel,
  fed one patch per row, so each output is one dot product of the flattened patch with the
  flattened filter. torch's CPU Conv3d computes that 4-5x slower than `F.linear` does
  (measured: 512 patches of the tiny model 5.6 ms against 1.4 ms; a 2B-sized tower's 1,024
  patches 271 ms against 60 ms), and under 2-process ZeRO-3 it was the most expensive
  single operator of the frozen tower's forward. `patch_embed_as_matmul` switches those
  modules (by instance: they stay `nn.Conv3d`, with the same weights, hooks and state-dict
  keys, so PEFT, DeepSpeed and saving see no difference) to the matmul; any other input
  shape still runs the convolution. Same sums, another order: outputs agree to float
  rounding (~1e-6 relative in fp32), not bit for bit.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..models.registry import ModelFamily


def liger_problem(family: ModelFamily) -> str | None:
    """Why Liger kernels cannot run here, or None."""
    if family.liger_patch is None:
        return f"Liger kernels have no patch for the {family.name} family"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install 'qvq-tune[liger]')"
    import torch
    if not torch.cuda.is_available():
        return "Liger kernels are Triton kernels and need a GPU"
    return None


def apply_liger(family: ModelFamily) -> None:
    problem = liger_problem(family)
    if problem:
        raise UserError(problem, key="kernels.liger")
    patch = getattr(importlib.import_module("liger_kernel.transformers"), family.liger_patch)
    patch(rope=True, rms_norm=True, layer_norm=True, swiglu=True, cross_entropy=False,
          fused_linear_cross_entropy=False)


class PatchMatmulConv3d(torch.nn.Conv3d):
    """An `nn.Conv3d` whose stride equals its kernel, computed as a matmul when each input
    holds exactly one patch (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-3:]) != tuple(self.kernel_size) or x.dim() not in (4, 5):
            return super().forward(x)
        flat = F.linear(x.reshape(*x.shape[:-4], -1), self.weight.reshape(self.out_channels, -1), self.bias)
        return flat.reshape(*flat.shape, 1, 1, 1)


def _one_patch_per_stride(module: torch.nn.Module) -> bool:
    return (type(module) is torch.nn.Conv3d and tuple(module.stride) == tuple(module.kernel_size)
            and all(p == 0 for p in module.padding) and tuple(module.dilation) == (1, 1, 1)
            and module.groups == 1 and module.padding_mode == "zeros")


def patch_embed_as_matmul(model: torch.nn.Module) -> int:
    """Switch every non-overlapping `nn.Conv3d` of `model` (Qwen's patch embeddings) to
    `PatchMatmulConv3d`; returns how many."""
    switched = 0
    for module in model.modules():
        if _one_patch_per_stride(module):
            module.__class__ = PatchMatmulConv3d
            switched += 1
    return switched
