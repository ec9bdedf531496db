"""Supervised fine-tuning (QLoRA / LoRA / full) with TRL's SFTTrainer.

One readable flow, run in every process that `accelerate launch` starts (or in-process):
run folder -> base model folder -> processor (with the dataset's settings) -> dataset
-> model (+ LoRA) -> trainer -> train -> save adapter and report into the run folder.
The trainer is TRL's, with per-token loss weights (`train/weighted_sft.py`).
Launching (single process, DDP, ZeRO-2/3) is `train/run.py`'s job; this module never
branches on it.
"""

from __future__ import annotations

import time

import torch

from ..data.collate import VisionCollator
from ..data.dataset import load_samples
from ..models.detect import detect
from ..models.loading import load_processor
from ..models.registry import get_family
from ..paths import write_json_atomic
from ..run_folder import METRICS, TRAIN_REPORT, RunFolder
from .callbacks import MetricsJsonl, read_metrics
from .config import Recipe
from .model_setup import build_model, trainable_summary, zero3_partition


def sft_config(recipe: Recipe, run: RunFolder):
    from trl import SFTConfig
    o = recipe.optim
    scheduler, scheduler_kwargs = o.scheduler, None
    if o.min_lr_ratio:
        scheduler, scheduler_kwargs = "cosine_with_min_lr", {"min_lr_rate": o.min_lr_ratio}
    return SFTConfig(
        output_dir=str(run.path / "checkpoints"), max_steps=o.max_steps,
        per_device_train_batch_size=o.per_device_batch_size, gradient_accumulation_steps=o.grad_accum,
        learning_rate=o.lr, lr_scheduler_type=scheduler, lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=o.warmup_steps, weight_decay=o.weight_decay, adam_beta2=o.adam_beta2,
        max_grad_norm=o.max_grad_norm, optim="adamw_torch", seed=o.seed, data_seed=o.seed,
        logging_steps=o.logging_steps,
        save_strategy="steps" if o.save_steps else "no", save_steps=o.save_steps or 500,
        bf16=recipe.dtype == "bfloat16", fp16=recipe.dtype == "float16",
        use_cpu=not torch.cuda.is_available(), report_to=recipe.report_to,
        gradient_checkpointing=o.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if o.gradient_checkpointing else None,
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None,
        dataloader_num_workers=0, ddp_find_unused_parameters=False, save_only_model=True,
        run_name=recipe.name, disable_tqdm=False,
    )


def run_sft(recipe: Recipe, run: RunFolder) -> dict:
    from .weighted_sft import WeightedSFTTrainer

    t0 = time.time()
    model_dir = recipe.model
    family = get_family(detect(model_dir).family)
    processor = load_processor(model_dir, **run.processor_settings())
    train_ds = load_samples(recipe.data.train)
    model = build_model(recipe, family, model_dir)
    args = sft_config(recipe, run)
    trainer = WeightedSFTTrainer(model=model, args=args, train_dataset=train_ds,
                         data_collator=VisionCollator(processor, loss_weights=True), processing_class=processor,
                         callbacks=[MetricsJsonl(run.file(METRICS))])
    result = trainer.train()
    trainer.save_model(str(run.adapter))
    report = {}
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(run.adapter))
        losses = [m["loss"] for m in read_metrics(run.file(METRICS)) if "loss" in m]
        report = {"objective": recipe.objective, "method": recipe.method, "steps": result.global_step,
                  "train_loss_first": losses[0] if losses else None,
                  "train_loss_last": losses[-1] if losses else None,
                  "train_loss_mean": result.training_loss, "wall_seconds": round(time.time() - t0, 1),
                  "world_size": args.world_size, "samples": len(train_ds),
                  "adapter": str(run.adapter), **trainable_summary(model),
                  "train_runtime_s": result.metrics.get("train_runtime"),
                  "zero3_partition": zero3_partition(trainer.model_wrapped)}
        write_json_atomic(run.file(TRAIN_REPORT), report)
    return report
