"""Liger kernels (Triton: GPU only) for the families that have them, switched on by the
recipe (`kernels.liger: true`): fused RMSNorm, LayerNorm, SwiGLU and multimodal RoPE.

They patch transformers' module classes, so `apply_liger` runs before the model is
loaded. Liger's fused linear cross-entropy is left off: TRL's trainers already score
tokens through their own fused LM head, which would replace it.
"""

from __future__ import annotations

import importlib
import importlib.util

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
