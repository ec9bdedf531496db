"""The end-to-end demo on the embedded tiny base: the main job.

synthesise diagrams -> build datasets -> evaluate the base -> QLoRA SFT under DeepSpeed
ZeRO-3 across 2 processes (accelerate launch) -> evaluate the tuned model (and with
blank images) -> merge into a bf16 model and verify -> report.json + PNG + tables, with the
reasoning diagnostics (truncation, loops, language mixing, consistency) before and after.
Every stage is the same library call the CLI exposes; the demo only chains them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError
from .paths import write_json_atomic

RECIPE = "demo_qlora_zero3"          # packaged in qvq_tune/presets/recipes/


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    task: str = "parts_cost"
    train_size: int = 2000
    test_size: int = 300
    steps: int = 400
    per_device_batch_size: int = 16
    num_processes: int = 2
    accelerate_config: str = "zero3_shard_all"
    seed: int = 0
    max_new_tokens: int = 64

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError("max_new_tokens must be >= 1", key="max_new_tokens")
        for key in ("train_size", "test_size", "steps", "per_device_batch_size", "num_processes"):
            if getattr(self, key) < 1:
                raise UserError(f"--{key.replace('_', '-')} must be >= 1", key=key)


def _say(msg: str) -> None:
    from rich.console import Console
    Console(stderr=True).print(f"[bold cyan]demo[/] {msg}")


def run_demo(cfg: DemoConfig) -> dict:
    from .data.build import BuildConfig, build
    from .eval.compare import compare, comparison_markdown, table_rows
    from .eval.evaluate import EvalOptions, evaluate, load_for_eval
    from .eval.report import plot_run, print_summary
    from .export.run import export_run
    from .paths import write_text_atomic
    from .run_folder import METRICS, RunFolder
    from .synth.generate import SynthConfig, generate
    from .tiny.pretrain import REPORT_FILE, ensure_tiny_base
    from .train.callbacks import read_metrics
    from .train.config import load_recipe
    from .train.run import train

    t0 = time.time()
    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    def stage(name):
        timings[name] = round(time.time() - t0 - sum(timings.values()), 1)

    _say("1/7 tiny base model (pre-trained once, then cached)")
    base = ensure_tiny_base(log=_say)
    base_pretrain = json.loads((base / REPORT_FILE).read_text())
    stage("base")

    _say(f"2/7 synthesising the '{cfg.task}' diagram task")
    raw = out / "data" / "raw"
    generate(SynthConfig(task=cfg.task, train=cfg.train_size, validation=max(10, cfg.test_size // 10),
                         test=cfg.test_size, seed=cfg.seed), raw)
    stage("synth")

    _say("3/7 building datasets with the base model's processor and chat template")
    data = {split: out / "data" / split for split in ("train", "test")}
    built = {split: build(BuildConfig(input=str(raw / f"{split}.jsonl"), model=str(base), out=str(folder),
                                      reasoning="qvq"))
             for split, folder in data.items()}
    stage("build")

    _say("4/7 evaluating the base model")
    opts = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=64, dtype="float32", device="cpu")
    base_eval = evaluate(load_for_eval(base, None, opts), data["test"], opts, out / "eval" / "base", desc="eval base")
    stage("eval_base")

    _say(f"5/7 QLoRA SFT, {cfg.accelerate_config} across {cfg.num_processes} processes")
    recipe = load_recipe(RECIPE, {
        "model": str(base), "output_dir": str(out), "name": "train", "data.train": str(data["train"]),
        "optim.max_steps": cfg.steps, "optim.per_device_batch_size": cfg.per_device_batch_size,
        "optim.seed": cfg.seed, "optim.logging_steps": max(1, min(10, cfg.steps // 10)),
        "launch.accelerate_config": cfg.accelerate_config, "launch.num_processes": cfg.num_processes})
    train_report = train(recipe)
    run = RunFolder(recipe.run_dir)
    stage("train")

    _say("6/7 evaluating the tuned model (4-bit base + adapter, as trained), then on blank images")
    topts = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=64, load_in_4bit=True, blank_images=True,
                        dtype="float32", device="cpu")
    tuned = evaluate(load_for_eval(base, run.adapter, topts), data["test"], topts, out / "eval" / "tuned",
                     desc="eval tuned")
    before_after = compare(base_eval, tuned)
    write_text_atomic(out / "eval" / "before_after.md", comparison_markdown(before_after, ("base", "tuned")))
    stage("eval_tuned")

    _say("7/7 merging the adapter into a bf16 model and verifying the merge")
    export = export_run(run.path, out / "export", verify_data=data["test"], verify_samples=8)
    merged = evaluate(load_for_eval(export["merged"], None, opts), data["test"], opts, out / "eval" / "merged",
                      desc="eval merged")
    stage("export")

    metrics = read_metrics(run.file(METRICS))
    losses = [m["loss"] for m in metrics if "loss" in m]
    accuracies = {"base": base_eval["accuracy"], "tuned": tuned["accuracy"],
                  "tuned\n(blank images)": tuned["blank_accuracy"], "merged\n(bf16)": merged["accuracy"]}
    png = plot_run(metrics, accuracies, out / "report.png",
                   f"qvq-tune demo: {cfg.task} ({cfg.steps} steps, {cfg.accelerate_config} x{cfg.num_processes})")
    report = {
        "task": cfg.task,
        "base_model": str(base),
        "base_accuracy": base_eval["accuracy"],
        "tuned_accuracy": tuned["accuracy"],
        "tuned_blank_image_accuracy": tuned["blank_accuracy"],
        "merged_accuracy": merged["accuracy"],
        "test_samples": tuned["n"],
        "train_samples": built["train"]["kept"],
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "train_steps": train_report["steps"],
        "world_size": train_report["world_size"],
        "trainable_parameters": train_report["trainable_parameters"],
        "zero3_partition": train_report["zero3_partition"],
        "merge_check": export["verification"],
        "diagnostics": {"base": base_eval, "tuned": tuned},
        "before_after": before_after,
        "base_pretrain_accuracy": base_pretrain["accuracy"],
        "stage_seconds": timings,
        "wall_seconds": round(time.time() - t0, 1),
        "plot": str(png),
        "config": asdict(cfg),
    }
    write_json_atomic(out / "report.json", report)
    print_summary([
        ("base accuracy (held-out test)", f"{report['base_accuracy']:.1%}"),
        ("tuned accuracy", f"{report['tuned_accuracy']:.1%}"),
        ("tuned, blank images", f"{report['tuned_blank_image_accuracy']:.1%}"),
        ("merged bf16 accuracy", f"{report['merged_accuracy']:.1%}"),
        ("train loss first -> last", f"{report['train_loss_first']:.3f} -> {report['train_loss_last']:.3f}"),
        ("merge check (bf16, reply tokens)", f"{export['verification']['saved_reply_top1_agreement']:.1%} same greedy token"),
        ("processes", str(report["world_size"])),
        ("wall time", f"{report['wall_seconds']:.0f} s"),
        ("report", str(out / "report.json")),
    ], title="qvq-tune demo")
    print_summary(table_rows(before_after), "reasoning before / after tuning",
                  columns=("metric", "base", "tuned", "delta"))
    write_text_atomic(out / "SUMMARY.txt", "\n".join(f"{k}: {v}" for k, v in report.items()) + "\n")
    return report
