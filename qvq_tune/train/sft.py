"""Objective sft: supervised fine-tuning (QLoRA / LoRA / full) with TRL's SFTTrainer.

Reads sft samples (`data/kinds.py`); its recipe section is `loss` (per-span token
weights). The shared flow (`objectives.run_objective`) loads the processor, the data and
the model; this module adds packing's per-sample positions, the collator with per-token
loss weights and TRL's trainer (`train/weighted_sft.py`).
"""

from __future__ import annotations

from ..data.collate import VisionCollator
from ..data.kinds import SFT
from .model_setup import adamw
from .objectives import Objective, Setup
from .packing import restart_positions_per_sample
from .trainer_args import common_args, pixel_cache


# "auto" off CUDA reads the labelled positions' logits only while that tensor stays small: at a
# 151k vocabulary a 2k-token sample's fp32 logits are 1.2 GB, held with their softmax and
# gradient at once (measured: SFT of a Qwen2-VL-2B shape OOM-killed at 10.5 GB per rank,
# scripts/real_shape.py); TRL's fused head scores in chunks instead.
LABELLED_LOGITS_CAP_GB = 0.25


def lm_head(recipe, vocab_size: int, longest: int) -> str:
    """`loss.lm_head` for this machine and data: "auto" is TRL's fused head on CUDA (its Triton
    kernel scores the labelled positions only, without the logits); elsewhere the labelled
    positions' logits (cheaper on a small vocabulary) unless a batch of the longest samples
    would make them larger than LABELLED_LOGITS_CAP_GB, then the fused (chunked) head."""
    import torch
    if recipe.loss.lm_head != "auto":
        return recipe.loss.lm_head
    if torch.cuda.is_available():
        return "fused"
    logits_gb = recipe.optim.per_device_batch_size * longest * vocab_size * 4 / 1e9
    return "labelled" if logits_gb <= LABELLED_LOGITS_CAP_GB else "fused"


def vocab_size(model) -> int:
    weight = model.get_output_embeddings().weight
    return getattr(weight, "ds_shape", weight.shape)[0]           # ZeRO-3 keeps the full shape aside


def longest(dataset) -> int:
    """The longest built sample's tokens (the `num_tokens` column the builder writes)."""
    return max(dataset["num_tokens"]) if "num_tokens" in dataset.column_names and len(dataset) else 0


def trainer(setup: Setup):
    from trl import SFTConfig

    from .weighted_sft import WeightedSFTTrainer

    recipe, processor = setup.recipe, setup.processor
    if recipe.data.packing:
        restart_positions_per_sample(setup.model, setup.family)
    args = SFTConfig(**common_args(recipe, setup.run), dataset_kwargs={"skip_prepare_dataset": True},
                     max_length=None)
    collator = VisionCollator(processor, packing=recipe.data.packing, loss_weights=True,
                              span_weights=(recipe.loss.reasoning_weight, recipe.loss.answer_weight),
                              **pixel_cache(recipe, len(setup.train), args.world_size, processor.image_processor))
    return WeightedSFTTrainer(model=setup.model, args=args, train_dataset=setup.train, eval_dataset=setup.eval,
                              data_collator=collator, processing_class=processor,
                              optimizers=(adamw(setup.model, recipe, setup.family), None),
                              lm_head=lm_head(recipe, vocab_size(setup.model), longest(setup.train))), ()


OBJECTIVE = Objective(name="sft", reads=SFT, trainer=trainer,
                      doc="supervised fine-tuning on prompts and replies, loss on the reply")
