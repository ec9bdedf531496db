"""What every objective's trainer shares: TrainingArguments from the recipe, and the
callbacks and hooks each trainer gets (metrics, progress, complete-checkpoint markers,
the vision tower kept in every step)."""

from __future__ import annotations

import os

import torch
from transformers.trainer_callback import ProgressCallback

from ..recipe import Recipe
from ..run_folder import CHECKPOINTS, METRICS, RunFolder
from .batch_stats import BatchStats
from .callbacks import MarkComplete, MetricsJsonl, Progress
from .profile import StepProfiler


def save_steps(recipe: Recipe) -> int:
    """Checkpoint cadence: the recipe's, or every evaluation when the best one is kept."""
    o = recipe.optim
    if o.save_steps:
        return o.save_steps
    return o.eval_steps if o.eval_steps and o.keep_best else 0


def common_args(recipe: Recipe, run: RunFolder) -> dict:
    """Keyword arguments of transformers' TrainingArguments (shared by SFTConfig and DPOConfig)."""
    o = recipe.optim
    scheduler, scheduler_kwargs = o.scheduler, None
    if o.min_lr_ratio:
        scheduler, scheduler_kwargs = "cosine_with_min_lr", {"min_lr_rate": o.min_lr_ratio}
    logger_dirs(run)
    saving = save_steps(recipe)
    evaluating = bool(o.eval_steps and recipe.data.eval)
    return dict(
        output_dir=str(run.path / CHECKPOINTS), max_steps=o.max_steps,
        per_device_train_batch_size=o.per_device_batch_size, per_device_eval_batch_size=o.per_device_batch_size,
        gradient_accumulation_steps=o.grad_accum, learning_rate=o.lr, lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs, warmup_steps=o.warmup_steps, weight_decay=o.weight_decay,
        adam_beta2=o.adam_beta2, max_grad_norm=o.max_grad_norm, optim="adamw_torch", seed=o.seed,
        data_seed=o.seed, logging_steps=o.logging_steps,
        train_sampling_strategy="random" if recipe.data.shuffle else "sequential",
        # Resumable checkpoints carry optimizer, scheduler and RNG state; without them only weights.
        save_strategy="steps" if saving else "no", save_steps=saving or 500, save_only_model=not saving,
        save_total_limit=o.save_total_limit,
        eval_strategy="steps" if evaluating else "no", eval_steps=o.eval_steps or None,
        prediction_loss_only=True,
        load_best_model_at_end=evaluating and o.keep_best, metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=recipe.dtype == "bfloat16", fp16=recipe.dtype == "float16",
        use_cpu=not torch.cuda.is_available(), report_to=recipe.report_to,
        activation_checkpointing=o.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if o.gradient_checkpointing else None,
        remove_unused_columns=False, dataloader_num_workers=recipe.data.workers,
        dataloader_persistent_workers=recipe.data.workers > 0, ddp_find_unused_parameters=False,
        run_name=recipe.name, disable_tqdm=False,
    )


def logger_dirs(run: RunFolder) -> None:
    """wandb (offline unless WANDB_MODE says otherwise) and tensorboard write into the run folder."""
    os.environ["WANDB_DIR"] = str(run.path)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.path / "tensorboard")


def pixel_cache(recipe: Recipe, samples: int, world_size: int, image_processor) -> dict:
    """`VisionCollator` cache arguments. A cache is only worth what it saves: an image must
    come back within the run (more sample draws than samples) for `memory` to hit, and
    processing a small image costs less than a step's noise (measured on the demo's 112-px
    diagrams: 2.6 ms for 8 images against a 60 ms step, while their float32 pixels held
    cost 0.3 MB each, 180 MB for 600 images), so the default is off. `disk` keeps the
    pixels under the cache folder, per processor settings, for later runs."""
    import hashlib
    import json

    from ..paths import cache_dir
    mode, o = recipe.data.pixel_cache, recipe.optim
    draws = o.max_steps * o.per_device_batch_size * o.grad_accum * world_size
    keep = mode == "disk" or (mode == "memory" and draws > samples)
    folder = None
    if mode == "disk":
        settings = json.dumps(image_processor.to_dict(), sort_keys=True, default=str)
        folder = str(cache_dir() / "pixels" / hashlib.sha256(settings.encode()).hexdigest()[:12])
    return {"cache_bytes": recipe.data.pixel_cache_mb * 2 ** 20 if keep else 0, "cache_dir": folder}


def flops_per_token(model, recipe: Recipe, family) -> float:
    """Training FLOPs per language-model token: 6 x the decoder's weights when they all train
    (forward, input gradients, weight gradients), 4 x when frozen under an adapter (no weight
    gradients). Embeddings, the vision tower and attention scores are left out."""
    n = sum(getattr(p, "ds_numel", p.numel()) for name, p in model.named_parameters()
            if family.part_of(name) == "language_model" and "embed_tokens" not in name)
    return (6 if recipe.method == "full" else 4) * n


def attach(trainer, run: RunFolder, recipe: Recipe, family, *extra) -> None:
    """Our callbacks in place of transformers' dict-printing progress bar, the batch
    counters behind tokens/s and the padding share, and the step profiler when asked."""
    stats = BatchStats()
    stats.attach(trainer.model)
    trainer.remove_callback(ProgressCallback)
    metrics = MetricsJsonl(run.file(METRICS), stats, flops_per_token(trainer.model, recipe, family))
    for callback in (Progress(), metrics, MarkComplete(), *extra):
        trainer.add_callback(callback)
    if recipe.profile.steps:
        trainer.add_callback(StepProfiler(run.path / "profile", recipe.profile.start_step, recipe.profile.steps,
                                          recipe.profile.trace))
