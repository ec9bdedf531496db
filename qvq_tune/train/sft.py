"""Supervised fine-tuning (QLoRA / LoRA / full) with TRL's SFTTrainer.

One readable flow, run in every process that `accelerate launch` starts:
load recipe -> base model folder -> processor -> dataset -> model (+ LoRA) -> trainer
-> train -> save adapter and report into the run folder. Launching (single process,
DDP, ZeRO-2/3) is `train/launch.py`'s job; this module never branches on it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ..data.dataset import load_samples
from ..models.detect import detect
from ..models.loading import load_processor
from ..models.registry import get_family
from ..paths import write_json_atomic
from .callbacks import MetricsJsonl, read_metrics
from .collators import VisionSFTCollator
from .config import Recipe, load_recipe
from .model_setup import build_model, trainable_summary, zero3_partition
from ..models.resolve import resolve_model_dir
from .run_folder import ADAPTER_DIR, init_run_folder


def sft_config(recipe: Recipe, run_dir):
    from trl import SFTConfig
    o = recipe.optim
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"), max_steps=o.max_steps,
        per_device_train_batch_size=o.per_device_batch_size, gradient_accumulation_steps=o.grad_accum,
        learning_rate=o.lr, lr_scheduler_type=o.scheduler, warmup_steps=o.warmup_steps,
        weight_decay=o.weight_decay, adam_beta2=o.adam_beta2, max_grad_norm=o.max_grad_norm,
        optim="adamw_torch", seed=o.seed, data_seed=o.seed, logging_steps=o.logging_steps,
        save_strategy="steps" if o.save_steps else "no", save_steps=o.save_steps or 500,
        bf16=recipe.dtype == "bfloat16", fp16=recipe.dtype == "float16",
        use_cpu=not torch.cuda.is_available(), report_to=recipe.report_to,
        gradient_checkpointing=o.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if o.gradient_checkpointing else None,
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None,
        dataloader_num_workers=0, ddp_find_unused_parameters=False, save_only_model=True,
        run_name=recipe.name, disable_tqdm=False,
    )


def run_sft(recipe: Recipe) -> dict:
    from trl import SFTTrainer

    t0 = time.time()
    model_dir = str(resolve_model_dir(recipe.model))
    family = get_family(detect(model_dir).family)
    processor = load_processor(model_dir)
    train_ds = load_samples(recipe.data.train)
    model = build_model(recipe, family, model_dir)
    run_dir = recipe.run_dir
    args = sft_config(recipe, run_dir)
    if args.process_index == 0:
        init_run_folder(recipe, model_dir)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds,
                         data_collator=VisionSFTCollator(processor), processing_class=processor,
                         callbacks=[MetricsJsonl(run_dir / "metrics.jsonl")])
    result = trainer.train()
    trainer.save_model(str(run_dir / ADAPTER_DIR))
    report = {}
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(run_dir / ADAPTER_DIR))
        losses = [m["loss"] for m in read_metrics(run_dir / "metrics.jsonl") if "loss" in m]
        report = {"method": recipe.method, "steps": result.global_step,
                  "train_loss_first": losses[0] if losses else None,
                  "train_loss_last": losses[-1] if losses else None,
                  "train_loss_mean": result.training_loss, "wall_seconds": round(time.time() - t0, 1),
                  "world_size": args.world_size, "samples": len(train_ds),
                  "adapter": str(run_dir / ADAPTER_DIR), **trainable_summary(model),
                  "train_runtime_s": result.metrics.get("train_runtime"),
                  "zero3_partition": zero3_partition(trainer.model_wrapped)}
        write_json_atomic(run_dir / "train_report.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="qvq-tune SFT worker (started by `qvq-tune train`)")
    parser.add_argument("--recipe", required=True)
    args = parser.parse_args(argv)
    from ..logs import quiet_third_party
    quiet_third_party()
    report = run_sft(load_recipe(args.recipe))
    if report:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
