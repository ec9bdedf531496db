"""Direct preference optimisation on image data with TRL's DPOTrainer (QLoRA / LoRA).

The same flow as SFT, on the preference pairs `data build` writes (`OUT/preference`:
prompt ids with the image placeholders expanded, chosen and rejected reply ids, the
prompt's media). The reference is always the starting policy, never a second copy of
the base weights: starting from an SFT adapter (`dpo.start_adapter`), TRL keeps a frozen
copy of that adapter as the reference; starting from the base, the reference is the
base with the new adapter disabled. Images rule out TRL's precomputed reference
log-probs (it refuses them for vision datasets), so the reference runs each step.
Labels cover the replies only (`completion_mask`); each pair's chosen and rejected rows
share the prompt's images.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data.collate import VisionPreferenceCollator
from ..models.detect import detect
from ..models.loading import load_processor
from ..models.registry import get_family
from ..recipe import Recipe
from ..run_folder import ADAPTER_DIR, RunFolder
from .callbacks import ChosenLogpWatch, peak_memory_mib
from .mixed_batches import keep_vision_tower_in_step
from .model_setup import adamw, build_model, keep_trainable_dtype
from .report import finish
from .sft import datasets
from .trainer_args import attach, common_args, pixel_cache


def start_adapter(path: str | None) -> str | None:
    """An adapter folder, or a run folder's adapter/."""
    if path is None:
        return None
    folder = Path(path)
    return str(folder / ADAPTER_DIR if (folder / ADAPTER_DIR / "adapter_config.json").is_file() else folder)


def dpo_config(recipe: Recipe, run: RunFolder):
    from trl import DPOConfig
    d = recipe.dpo
    losses, weights = [d.loss_type], [1.0]
    if d.sft_weight:
        losses, weights = losses + ["sft"], weights + [d.sft_weight]
    return DPOConfig(**common_args(recipe, run), beta=d.beta, loss_type=losses, loss_weights=weights,
                     max_length=None, precompute_ref_log_probs=False)


def run_dpo(recipe: Recipe, run: RunFolder, resume_from: str | None = None) -> dict:
    from trl import DPOTrainer

    started = time.time()
    family = get_family(detect(recipe.model).family)
    processor = load_processor(recipe.model, **run.processor_settings())
    train_ds, eval_ds = datasets(recipe, "preference")
    before_model = peak_memory_mib()["peak_rss_mib"]     # the runtime's own footprint (planner baseline)
    model = build_model(recipe, family, recipe.model, adapter=start_adapter(recipe.dpo.start_adapter))
    keep_vision_tower_in_step(model, family)
    args = dpo_config(recipe, run)
    collator = VisionPreferenceCollator(
        processor, **pixel_cache(recipe, len(train_ds), args.world_size, processor.image_processor))
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_ds,
                         eval_dataset=eval_ds, data_collator=collator,
                         processing_class=processor, optimizers=(adamw(model, recipe, family), None))
    keep_trainable_dtype(trainer.model, recipe.dtype)
    attach(trainer, run, recipe, family, ChosenLogpWatch(recipe.dpo.chosen_logp_drop_warning))
    result = trainer.train(resume_from_checkpoint=resume_from)
    return finish(trainer, result, recipe, run, processor, samples=len(train_ds), started=started,
                  resumed_from=resume_from, rss_before_model_mib=before_model)
