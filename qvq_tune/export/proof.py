"""The merge proof: the exported folder must compute what base + adapter computes.

The reference is computed independently of the merge code: the original base checkpoint,
loaded by transformers in fp32, with the adapter applied *unmerged* by PEFT (its own LoRA
forward and scaling). The candidate is the exported folder reloaded as a user loads it.
Both run on image+text samples from the run's data; the comparison is on logits
(max / mean absolute difference) and on the greedy token at every reply position.
Models are loaded one at a time, so the proof holds one copy of the model in memory.

For a QLoRA adapter the merged model is also compared with the 4-bit base + adapter it
was trained on, reported separately: the adapter may have learnt to compensate the 4-bit
rounding, which the unquantised merge does not reproduce (it does not gate the export).
Merged into the 4-bit rounding itself (`--base-weights as-trained`, `export/nf4.py`), the
4-bit base + adapter is the reference that gates, and the unquantised one is reported.

Gate: the merged folder passes when no reply token flips to one the reference scores more
than `FLIP_MARGIN` logits below its own choice, and the largest logit difference stays
within the export dtype's tolerance: the larger of a few units of the dtype's rounding
relative to the logits' scale, and `ROUNDING_FLOOR_FACTOR` times the difference that
rounding the *base alone* to the dtype makes (its `rounding_floor`, measured on the same
samples). The floor matters at a real vocabulary with small logits (random or fresh
weights), where the largest of millions of rounding differences outgrows a fixed fraction
of the largest logit although nothing is wrong with the merge.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..models.loading import load_model, reset_rope_cache
from .adapter import Adapter
from .names import NameIndex

FLIP_MARGIN = 1.0
# Largest |logit difference| allowed, as a fraction of the largest |reference logit|: a
# few units of the dtype's rounding (bf16 keeps 8 significant bits, fp16 11), which a
# wrong weight exceeds by far; fp32 must agree to summation-order rounding.
MAX_REL_DIFF = {"float32": 1e-4, "float16": 8 * 2 ** -11, "bfloat16": 8 * 2 ** -8}
# The merged weights are rounded once, as the base's are: a right merge stays within a
# small multiple of what rounding the base alone does to its logits.
ROUNDING_FLOOR_FACTOR = 2.0


@dataclass
class Comparison:
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    reply_top1_agreement: float          # positions whose next token is part of a reply
    top1_agreement: float                # every attended position
    reply_worst_flip: float              # reference-logit gap of the worst changed greedy reply token


@dataclass
class MergeProof:
    samples: int
    dtype: str
    vs_base_plus_adapter: Comparison
    adapter_effect: float                # mean |logits(base + adapter) - logits(base)|: the adapter is not a no-op
    logit_scale: float
    tolerance: dict
    passed: bool
    reasons: list[str] = field(default_factory=list)
    rounding_floor: float | None = None  # max |logits(base rounded to dtype) - logits(base)|
    vs_4bit_base_plus_adapter: Comparison | None = None   # QLoRA only: the model as trained
    peak_rss_mb: float | None = None
    gated_on: str = "base_plus_adapter"  # or "4bit_base_plus_adapter" (merged into the 4-bit rounding)

    def to_dict(self) -> dict:
        return asdict(self)


def reply_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next-token prediction is scored (labels shifted left by one)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB: `VmHWM` where /proc has it (it
    starts afresh at exec, where `ru_maxrss` keeps the size of the process that forked it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    out = model(**batch).logits.float()
    reset_rope_cache(model)
    return out


def with_adapter(model, adapter: Adapter):
    """`model` with the adapter attached by PEFT, unmerged. Adapter keys are renamed to the
    model's module tree when they were saved under another layout (PEFT would otherwise
    skip them with a warning), and every adapter tensor must load."""
    from peft import LoraConfig, PeftModel
    from peft.utils import set_peft_model_state_dict

    modules = NameIndex((n for n, _ in model.named_modules()), _aliases(model))
    params = NameIndex((n for n, _ in model.named_parameters()), _aliases(model))
    renamed = adapter.renamed_tensors(modules, params)
    config = LoraConfig.from_pretrained(str(adapter.path))
    config.target_modules = sorted(adapter.module_map(modules).values())
    config.inference_mode = True
    wrapped = PeftModel(model, config)
    result = set_peft_model_state_dict(wrapped, renamed)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise RuntimeError(f"PEFT did not load the whole adapter: unexpected {result.unexpected_keys[:3]}, "
                           f"missing {missing[:3]}")
    return wrapped.eval()


def _aliases(model) -> tuple[tuple[str, str], ...]:
    from ..models.registry import family_for_model_type
    fam = family_for_model_type(model.config.model_type)
    return fam.weight_prefix_aliases if fam else ()


def compare(candidate: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor,
            replies: torch.Tensor) -> Comparison:
    diff = (candidate - reference).abs()[mask]
    choice = candidate.argmax(-1)
    same = choice == reference.argmax(-1)
    gap = reference.max(-1).values - reference.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    return Comparison(
        max_abs_logit_diff=diff.max().item(), mean_abs_logit_diff=diff.mean().item(),
        reply_top1_agreement=same[replies].float().mean().item() if replies.any() else 1.0,
        top1_agreement=same[mask].float().mean().item(),
        reply_worst_flip=gap[replies].max().item() if replies.any() else 0.0)


def rounding_floor(base_dir, batch: dict, base: torch.Tensor, mask: torch.Tensor, dtype: str) -> float | None:
    """The largest logit difference rounding the base's weights to `dtype` makes on
    `batch` (the base loaded in `dtype`, computed in fp32 as the merged folder is); None
    for fp32, which is not rounded."""
    if dtype == "float32":
        return None
    rounded = load_model(base_dir, dtype=dtype).float().eval()
    floor = (_logits(rounded, batch) - base).abs()[mask].max().item()
    del rounded
    return floor


def prove(base_dir: str | Path, adapter: Adapter, merged_dir: str | Path, batch: dict, dtype: str, *,
          quantized: dict | None = None, as_trained: bool = False) -> MergeProof:
    """`batch`: a collated model input with `labels`. `quantized`: the 4-bit settings the
    adapter was trained with (`load_model` keyword arguments), for a QLoRA run.
    `as_trained`: the merge went into the 4-bit rounding, so the 4-bit model gates."""
    batch = dict(batch)
    replies = reply_positions(batch.pop("labels"))
    mask = batch["attention_mask"].bool()
    reference_model = with_adapter(load_model(base_dir, dtype="float32"), adapter)
    reference = _logits(reference_model, batch)
    with reference_model.disable_adapter():
        base = _logits(reference_model, batch)
    del reference_model
    floor = rounding_floor(base_dir, batch, base, mask, dtype) if not as_trained else None
    merged = _logits(load_model(merged_dir, dtype="float32").eval(), batch)
    result = compare(merged, reference, mask, replies)
    gated, gate_reference = result, reference
    as_trained_result = None
    if quantized:
        q_model = with_adapter(load_model(base_dir, load_in_4bit=True, **quantized), adapter)
        q_reference = _logits(q_model, batch)
        del q_model
        as_trained_result = compare(merged, q_reference, mask, replies)
        if as_trained:
            gated, gate_reference = as_trained_result, q_reference
    scale = gate_reference[mask].abs().max().item()
    tolerance = {"max_abs_logit_diff": max(MAX_REL_DIFF[dtype] * max(scale, 1.0),
                                           ROUNDING_FLOOR_FACTOR * (floor or 0.0)),
                 "reply_worst_flip": FLIP_MARGIN}
    reasons = []
    if gated.max_abs_logit_diff > tolerance["max_abs_logit_diff"]:
        reasons.append(f"max |logit difference| {gated.max_abs_logit_diff:.4g} exceeds the {dtype} tolerance "
                       f"{tolerance['max_abs_logit_diff']:.4g}")
    if gated.reply_worst_flip > FLIP_MARGIN:
        reasons.append(f"a reply token flipped to one the reference scores {gated.reply_worst_flip:.3g} logits "
                       f"below its choice (allowed: {FLIP_MARGIN})")
    return MergeProof(samples=int(batch["input_ids"].shape[0]), dtype=dtype, vs_base_plus_adapter=result,
                      adapter_effect=(reference - base).abs()[mask].mean().item(), logit_scale=scale,
                      tolerance=tolerance, passed=not reasons, reasons=reasons,
                      vs_4bit_base_plus_adapter=as_trained_result, peak_rss_mb=peak_rss_mb(), rounding_floor=floor,
                      gated_on="4bit_base_plus_adapter" if as_trained else "base_plus_adapter")
