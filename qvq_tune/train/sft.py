"""Supervised fine-tuning (QLoRA / LoRA / full) with TRL's SFTTrainer.

One readable flow, run in every process that `accelerate launch` starts (or in-process):
run folder -> base model folder -> processor (with the dataset's settings) -> datasets
-> model (+ LoRA, seeded) -> trainer (TRL's, with per-token loss weights:
`train/weighted_sft.py`) -> train (or resume) -> adapter and report into the run folder.
Launching (single process, DDP, ZeRO-2/3) is `train/run.py`'s job; this
module never branches on it.
"""

from __future__ import annotations

import time

from ..data.collate import VisionCollator
from ..data.dataset import load_samples
from ..models.detect import detect
from ..models.loading import load_processor
from ..models.registry import get_family
from ..run_folder import RunFolder
from .callbacks import peak_memory_mib
from .config import Recipe
from .mixed_batches import keep_vision_tower_in_step
from .packing import restart_positions_per_sample
from .model_setup import adamw, build_model, keep_trainable_dtype
from .report import finish
from .trainer_args import attach, common_args, pixel_cache


def datasets(recipe: Recipe, kind: str):
    """(train, eval or None) samples of one kind: "dataset" (SFT) or "preference" (DPO)."""
    return (load_samples(recipe.data.train, kind),
            load_samples(recipe.data.eval, kind) if recipe.data.eval else None)


def lm_head(recipe: Recipe) -> str:
    """`loss.lm_head` for this machine: "auto" is TRL's fused head on CUDA (its Triton kernel
    scores the labelled positions only, without the logits), the labelled positions elsewhere."""
    import torch
    if recipe.loss.lm_head != "auto":
        return recipe.loss.lm_head
    return "fused" if torch.cuda.is_available() else "labelled"


def run_sft(recipe: Recipe, run: RunFolder, resume_from: str | None = None) -> dict:
    from trl import SFTConfig

    from .weighted_sft import WeightedSFTTrainer

    started = time.time()
    family = get_family(detect(recipe.model).family)
    processor = load_processor(recipe.model, **run.processor_settings())
    train_ds, eval_ds = datasets(recipe, "dataset")
    before_model = peak_memory_mib()["peak_rss_mib"]     # the runtime's own footprint (planner baseline)
    model = build_model(recipe, family, recipe.model)
    keep_vision_tower_in_step(model, family)
    if recipe.data.packing:
        restart_positions_per_sample(model, family)
    args = SFTConfig(**common_args(recipe, run), dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)
    collator = VisionCollator(processor, packing=recipe.data.packing, loss_weights=True,
                              span_weights=(recipe.loss.reasoning_weight, recipe.loss.answer_weight),
                              **pixel_cache(recipe, len(train_ds), args.world_size, processor.image_processor))
    trainer = WeightedSFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                 data_collator=collator, processing_class=processor,
                                 optimizers=(adamw(model, recipe, family), None), lm_head=lm_head(recipe))
    keep_trainable_dtype(trainer.model, recipe.dtype)
    attach(trainer, run, recipe, family)
    result = trainer.train(resume_from_checkpoint=resume_from)
    return finish(trainer, result, recipe, run, processor, samples=len(train_ds), started=started,
                  resumed_from=resume_from, rss_before_model_mib=before_model)
