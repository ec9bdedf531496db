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


def lm_head(recipe) -> str:
    """`loss.lm_head` for this machine: "auto" is TRL's fused head on CUDA (its Triton kernel
    scores the labelled positions only, without the logits), the labelled positions elsewhere."""
    import torch
    if recipe.loss.lm_head != "auto":
        return recipe.loss.lm_head
    return "fused" if torch.cuda.is_available() else "labelled"


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
                              lm_head=lm_head(recipe)), ()


OBJECTIVE = Objective(name="sft", reads=SFT, trainer=trainer,
                      doc="supervised fine-tuning on prompts and replies, loss on the reply")
