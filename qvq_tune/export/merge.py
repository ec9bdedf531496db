"""Merge a LoRA adapter into the base model's full-precision weights and verify the merge.

The base is always loaded unquantised (a QLoRA adapter trained on 4-bit weights is merged
into the bf16/fp32 originals, never into 4-bit ones). The merged model is saved in the
export dtype (bf16 by default), then reloaded and compared with base + adapter on real
samples (see `MergeCheck`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..models.loading import load_model, load_processor, reset_rope_cache
from ..paths import atomic_dir, write_json_atomic


@dataclass
class MergeCheck:
    """Two comparisons against base + adapter (unmerged, fp32) on real samples.

    `exact_*`: the merge itself, in fp32 before any cast; must agree to rounding error.
    `saved_*`: the saved model in the export dtype. bf16 rounding moves logits a little
    and may flip the greedy token where the reference itself hesitates (a near-tie), so
    the check is that on reply positions the saved model never picks a token the
    reference scores more than `flip_margin` logits below its own choice.
    """
    samples: int
    exact_max_abs_logit_diff: float
    saved_max_abs_logit_diff: float
    saved_mean_abs_logit_diff: float
    saved_top1_agreement: float            # all positions
    saved_reply_top1_agreement: float      # positions that carry labels (reasoning + answer)
    saved_reply_worst_flip: float          # largest reference-logit gap of a flipped greedy token
    adapter_effect: float                  # mean |logits(base+adapter) - logits(base)|: not a no-op
    passed: bool


def _assert_unquantised(model) -> None:
    for name, module in model.named_modules():
        if type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            raise RuntimeError(f"refusing to merge into quantised module {name}")


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    out = model(**batch).logits.float()
    reset_rope_cache(model)
    return out


def verify_merge(base_dir: str, adapter_dir: str, merged_dir: str, batch: dict, reply_mask: torch.Tensor,
                 *, exact_tolerance: float = 1e-3, flip_margin: float = 1.0) -> MergeCheck:
    """`batch` is a collated model input; `reply_mask` marks the positions whose next token
    is part of a reply (labels shifted by one)."""
    from peft import PeftModel
    base = load_model(base_dir, dtype="float32").eval()
    base_logits = _logits(base, batch)
    reference = PeftModel.from_pretrained(base, adapter_dir).eval()
    ref_logits = _logits(reference, batch)
    exact_logits = _logits(reference.merge_and_unload().eval(), batch)
    saved_logits = _logits(load_model(merged_dir, dtype="float32").eval(), batch)
    mask = batch["attention_mask"].bool()
    scale = ref_logits[mask].abs().max().item()
    exact = (exact_logits - ref_logits).abs()[mask].max().item()
    saved = (saved_logits - ref_logits).abs()[mask]
    choice = saved_logits.argmax(-1)
    same = choice == ref_logits.argmax(-1)
    gap = ref_logits.max(-1).values - ref_logits.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    reply_same = same[reply_mask].float().mean().item() if reply_mask.any() else 1.0
    worst_flip = gap[reply_mask].max().item() if reply_mask.any() else 0.0
    return MergeCheck(
        samples=int(batch["input_ids"].shape[0]), exact_max_abs_logit_diff=exact,
        saved_max_abs_logit_diff=saved.max().item(), saved_mean_abs_logit_diff=saved.mean().item(),
        saved_top1_agreement=same[mask].float().mean().item(), saved_reply_top1_agreement=reply_same,
        saved_reply_worst_flip=worst_flip, adapter_effect=(ref_logits - base_logits).abs()[mask].mean().item(),
        passed=exact <= exact_tolerance * max(scale, 1.0) and worst_flip <= flip_margin)


def reply_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next-token prediction is scored (labels shifted left by one)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def merge_adapter(base_dir: str, adapter_dir: str, out_dir: str | Path, *, dtype: str = "bfloat16") -> Path:
    from peft import PeftModel
    base = load_model(base_dir, dtype="float32")
    _assert_unquantised(base)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    processor = load_processor(base_dir)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        identity = Path(base_dir) / "qvq_tune.json"
        if identity.is_file():
            shutil.copy(identity, tmp / "base_qvq_tune.json")
    return out_dir
