"""The end-to-end demo on the embedded tiny base: the main job.

synthesise diagrams -> build datasets -> evaluate the base -> QLoRA SFT under DeepSpeed
ZeRO-3 across 2 processes (accelerate launch) -> evaluate the tuned model (and with
blank images) -> export (licence gate; streamed merge into bf16, proven against base +
adapter before it is put in place; a vLLM-ready adapter) -> report.json + PNG + table.
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
    # The tiny base carries the Qwen LICENSE AGREEMENT, as QVQ-72B-Preview does: the demo
    # accepts it for its exports as a user does with `--accept-license qwen`.
    accept_license: str = "qwen"

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError("max_new_tokens must be >= 1", key="max_new_tokens")
        for key in ("train_size", "test_size", "steps", "per_device_batch_size", "num_processes"):
            if getattr(self, key) < 1:
                raise UserError(f"--{key.replace('_', '-')} must be >= 1", key=key)


def _say(msg: str) -> None:
    from rich.console import Console
    Console(stderr=True).print(f"[bold cyan]demo[/] {msg}")


def _agree(comparison: dict | None) -> str:
    if not comparison:
        return "n/a"
    return (f"{comparison['reply_top1_agreement']:.1%} same reply tokens, "
            f"max |dlogit| {comparison['max_abs_logit_diff']:.3g}")


def run_demo(cfg: DemoConfig) -> dict:
    from .data.build import BuildConfig, build
    from .eval.evaluate import EvalOptions, evaluate, load_for_eval
    from .eval.report import plot_run, print_summary
    from .export.run import AdapterRequest, MergeRequest, export_adapter, export_merge
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
    opts = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=64)
    base_eval = evaluate(load_for_eval(base, None, opts), data["test"], opts,
                         out_jsonl=out / "eval" / "base.jsonl", desc="eval base")
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
    topts = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=64, load_in_4bit=True)
    tuned_model = load_for_eval(base, run.adapter, topts)
    tuned = evaluate(tuned_model, data["test"], topts, out_jsonl=out / "eval" / "tuned.jsonl", desc="eval tuned")
    topts.blank_images = True
    tuned_blank = evaluate(tuned_model, data["test"], topts, out_jsonl=out / "eval" / "tuned_blank.jsonl",
                           desc="eval tuned, blank")
    del tuned_model
    stage("eval_tuned")

    _say("7/7 export: licence gate, streamed merge into bf16 proven against base + adapter, vLLM adapter")
    evaluation = {"base accuracy": base_eval["accuracy"], "QLoRA accuracy (4-bit base + adapter)": tuned["accuracy"],
                  "QLoRA accuracy, blank images": tuned_blank["accuracy"], "test samples": tuned["n"]}
    export = export_merge(MergeRequest(out=out / "export" / "merged", run=run.path, data=data["test"], samples=8,
                                       accept_license=cfg.accept_license, force=True, evaluation=evaluation))
    served = export_adapter(AdapterRequest(out=out / "export" / "vllm_adapter", run=run.path, target="vllm",
                                           accept_license=cfg.accept_license, force=True, evaluation=evaluation))
    mopts = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=64, dtype="float32")
    merged = evaluate(load_for_eval(export["out"], None, mopts), data["test"], mopts,
                      out_jsonl=out / "eval" / "merged.jsonl", desc="eval merged")
    stage("export")

    metrics = read_metrics(run.file(METRICS))
    losses = [m["loss"] for m in metrics if "loss" in m]
    accuracies = {"base": base_eval["accuracy"], "tuned": tuned["accuracy"],
                  "tuned\n(blank images)": tuned_blank["accuracy"], "merged\n(bf16)": merged["accuracy"]}
    png = plot_run(metrics, accuracies, out / "report.png",
                   f"qvq-tune demo: {cfg.task} ({cfg.steps} steps, {cfg.accelerate_config} x{cfg.num_processes})")
    report = {
        "task": cfg.task,
        "base_model": str(base),
        "base_accuracy": base_eval["accuracy"],
        "tuned_accuracy": tuned["accuracy"],
        "tuned_blank_image_accuracy": tuned_blank["accuracy"],
        "merged_accuracy": merged["accuracy"],
        "test_samples": tuned["n"],
        "train_samples": built["train"]["kept"],
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "train_steps": train_report["steps"],
        "world_size": train_report["world_size"],
        "trainable_parameters": train_report["trainable_parameters"],
        "zero3_partition": train_report["zero3_partition"],
        "license": {k: export["license"][k] for k in ("license", "name", "commercial_use", "requires_acceptance",
                                                        "conditions", "disagreement")},
        "merge_check": export["proof"],
        "merge_stats": export["merge"],
        "vllm_serve": served["vllm_serve"],
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
        ("merged bf16 accuracy (unquantised base)", f"{report['merged_accuracy']:.1%}"),
        ("train loss first -> last", f"{report['train_loss_first']:.3f} -> {report['train_loss_last']:.3f}"),
        ("licence", f"{report['license']['license']} (accepted for export)"),
        ("merge proof vs base + adapter", f"{_agree(export['proof']['vs_base_plus_adapter'])}"),
        ("merged vs 4-bit base + adapter", f"{_agree(export['proof']['vs_4bit_base_plus_adapter'])}"),
        ("processes", str(report["world_size"])),
        ("wall time", f"{report['wall_seconds']:.0f} s"),
        ("report", str(out / "report.json")),
    ], title="qvq-tune demo")
    write_text_atomic(out / "SUMMARY.txt", "\n".join(f"{k}: {v}" for k, v in report.items()) + "\n")
    return report
