"""The end-to-end demo on the embedded tiny base: the main job.

synthesise diagrams (30% of the training traces carry a defect a distilled QVQ trace
might: a loop, or Chinese mixed in; same final answer) -> build datasets -> evaluate the
base -> QLoRA SFT under DeepSpeed ZeRO-3 across 2 processes (accelerate launch) ->
evaluate the tuned model (and with blank images; and sampled replies, counting the
defects it learnt) -> DPO from the SFT adapter on clean-vs-defective pairs cut at the
first differing step -> evaluate again -> export (licence gate; streamed merge into bf16,
proven against base + adapter before it is put in place; a vLLM-ready adapter) ->
report.json + PNG + tables, with the reasoning diagnostics (truncation, loops, language
mixing, consistency) before and after. Every stage is the same library call the CLI
exposes; the demo only chains them.

A tool task (`--task parts_lookup`) is evaluated by running its tool (`eval --tools`, the
`tools.py` the synthesiser writes), reports the tool-call rates, and has no defective traces,
DPO stage or sampled-defect count (its data has no preference pairs).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError
from .paths import write_json_atomic

SFT_RECIPE, DPO_RECIPE = "demo_qlora_zero3", "demo_dpo_zero3"     # packaged in qvq_tune/presets/recipes/


@dataclass
class DemoConfig:
    out: str = field(default="runs/demo", metadata={"help": "output folder"})
    task: str = field(default="parts_cost", metadata={"help": "synthetic task (see `qvq-tune synth --help`)"})
    train_size: int = field(default=2000, metadata={"help": "training records"})
    test_size: int = field(default=300, metadata={"help": "held-out test records"})
    steps: int = field(default=400, metadata={"help": "SFT steps"})
    per_device_batch_size: int = 16
    num_processes: int = 2
    accelerate_config: str = field(default="zero3_shard_all", metadata={
        "help": "launcher preset (single, ddp, zero2, zero3, zero3_offload, zero3_shard_all) or a YAML path"})
    seed: int = 0
    max_new_tokens: int = 64
    defect_rate: float = field(default=0.3, metadata={
        "help": "share of SFT traces with a loop or language mixing (same answer)"})
    dpo_steps: int = field(default=100, metadata={"help": "DPO steps (0: no DPO stage)"})
    defect_samples: int = field(default=4, metadata={
        "help": "sampled replies per test prompt when counting defects"})
    # The tiny base carries the Qwen LICENSE AGREEMENT, as QVQ-72B-Preview does: the demo
    # accepts it for its exports as a user does with `--accept-license qwen`.
    accept_license: str = "qwen"

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError("max_new_tokens must be >= 1", key="max_new_tokens")
        for key in ("train_size", "test_size", "steps", "per_device_batch_size", "num_processes",
                    "defect_samples"):
            if getattr(self, key) < 1:
                raise UserError(f"--{key.replace('_', '-')} must be >= 1", key=key)
        if self.dpo_steps < 0:
            raise UserError("--dpo-steps must be >= 0", key="dpo_steps")
        if not 0 <= self.defect_rate <= 1:
            raise UserError("--defect-rate must be in [0, 1]", key="defect_rate")
        from .synth.tasks import TASKS
        if self.task not in TASKS:
            raise UserError(f"--task {self.task!r} is not one of {', '.join(TASKS)}", key="task")
        from .train.launch import resolve_accelerate_config
        try:
            resolve_accelerate_config(self.accelerate_config)
        except UserError as exc:
            raise UserError(f"--accelerate-config: {exc.bare_message}", key="accelerate_config") from None


def say(msg: str) -> None:
    from rich.console import Console
    Console(stderr=True).print(f"[bold cyan]demo[/] {msg}")


class Clock:
    def __init__(self):
        self.t0, self.stages = time.time(), {}

    def stage(self, name: str) -> None:
        self.stages[name] = round(time.time() - self.t0 - sum(self.stages.values()), 1)


def defect_rate(em, test_dir: Path, cfg: DemoConfig, out_dir: Path, desc: str) -> dict:
    """Share of sampled replies (several per test prompt, temperature 1, fixed seed) that show
    a defect the noisy training data teaches (its loop phrases, its Chinese phrases), beside
    the evaluator's general loop and language-mixing rates over the same replies."""
    from .eval.evaluate import EvalOptions, evaluate
    from .eval.scoring import summarize
    from .synth.tasks import DEFECTS, taught_defects
    opts = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=32, samples=cfg.defect_samples,
                       temperature=1.0, seed=cfg.seed, dtype="float32", device="cpu")
    summary = evaluate(em, test_dir, opts, out_dir, desc=desc)
    rows = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert summarize(rows)["n"] == summary["n"]
    found = [taught_defects(r["reply"]) for r in rows]
    return {"rate": sum(bool(f) for f in found) / len(rows),
            "by_kind": {kind: sum(kind in f for f in found) / len(rows) for kind in DEFECTS},
            "replies": len(rows), "loop_rate": summary["loop_rate"],
            "language_mix_rate": summary["language_mix_rate"]}


def _agree(comparison: dict | None) -> str:
    if not comparison:
        return "n/a"
    return (f"{comparison['reply_top1_agreement']:.1%} same reply tokens, "
            f"max |dlogit| {comparison['max_abs_logit_diff']:.3g}")


def _recipe(recipe_name: str, overrides: dict, cfg: DemoConfig):
    from .recipe import load_recipe
    return load_recipe(recipe_name, {**overrides, "optim.seed": cfg.seed,
                                     "launch.accelerate_config": cfg.accelerate_config,
                                     "launch.num_processes": cfg.num_processes})


def _train(recipe_name: str, overrides: dict, cfg: DemoConfig):
    from .run_folder import RunFolder
    from .train.run import train
    recipe = _recipe(recipe_name, overrides, cfg)
    return train(recipe, overwrite=True), RunFolder(recipe.run_dir)


def dpo_overrides(cfg: DemoConfig, base: Path, out: Path, data: dict, sft_run: Path) -> dict:
    """What the demo sets in the DPO recipe (`scripts/demo_dpo_stage.py` re-runs the stage with them)."""
    return {"model": str(base), "output_dir": str(out), "name": "dpo", "data.train": str(data["dpo_train"]),
            "dpo.start_adapter": str(sft_run), "optim.max_steps": cfg.dpo_steps}


def check_recipes(cfg: DemoConfig) -> None:
    """The demo's recipes with its settings, validated before the tiny base is built or any data made."""
    _recipe(SFT_RECIPE, {"optim.max_steps": cfg.steps, "optim.per_device_batch_size": cfg.per_device_batch_size}, cfg)
    if cfg.dpo_steps:
        _recipe(DPO_RECIPE, {"optim.max_steps": cfg.dpo_steps}, cfg)


def run_demo(cfg: DemoConfig) -> dict:
    from .data.build import BuildConfig, build
    from .eval.compare import compare, comparison_markdown
    from .eval.evaluate import EvalOptions, evaluate, load_for_eval
    from .export.run import AdapterRequest, MergeRequest, export_adapter, export_merge
    from .paths import write_text_atomic
    from .synth.generate import SynthConfig, generate
    from .synth.tasks import DEFECTS
    from .tiny.base_record import record_pretraining
    from .tiny.pretrain import REPORT_FILE, ensure_tiny_base

    from .synth.tasks import TASKS

    check_recipes(cfg)               # before anything is built (the tiny base takes minutes on first use)
    clock = Clock()
    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    agent = bool(TASKS[cfg.task].tools) if cfg.task in TASKS else False
    dpo = cfg.dpo_steps > 0 and not agent

    say("1/9 tiny base model (pre-trained once, then cached)")
    base = ensure_tiny_base(log=say)
    record_pretraining(base, log=say)
    base_pretrain = json.loads((base / REPORT_FILE).read_text())
    clock.stage("base")

    defects = 0.0 if agent else cfg.defect_rate         # a tool task has no defective traces
    say(f"2/9 synthesising the '{cfg.task}' diagram task ({defects:.0%} of traces defective)")
    raw = out / "data" / "raw"
    generate(SynthConfig(task=cfg.task, train=cfg.train_size, validation=max(10, cfg.test_size // 10),
                         test=cfg.test_size, seed=cfg.seed, defect_rate=defects, dpo=dpo,
                         dpo_kinds=DEFECTS), raw)
    tools = str(raw / "tools.py") if agent else None        # the tool eval runs
    clock.stage("synth")

    say("3/9 building datasets with the base model's processor and chat template")
    data = {split: out / "data" / split for split in ("train", "test", "dpo_train")}
    built = {split: build(BuildConfig(input=str(raw / f"{split}.jsonl"), model=str(base), out=str(data[split]),
                                      reasoning="qvq", pair_cut="step" if split == "dpo_train" else "none"))
             for split in (("train", "test", "dpo_train") if dpo else ("train", "test"))}
    clock.stage("build")

    say("4/9 evaluating the base model")
    opts = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=64, dtype="float32", device="cpu", tools=tools)
    base_eval = evaluate(load_for_eval(base, None, opts), data["test"], opts, out / "eval" / "base",
                         desc="eval base")
    clock.stage("eval_base")

    say(f"5/9 QLoRA SFT, {cfg.accelerate_config} across {cfg.num_processes} processes")
    sft_report, sft_run = _train(SFT_RECIPE, {
        "model": str(base), "output_dir": str(out), "name": "train", "data.train": str(data["train"]),
        "optim.max_steps": cfg.steps, "optim.per_device_batch_size": cfg.per_device_batch_size,
        "optim.logging_steps": max(1, min(10, cfg.steps // 10))}, cfg)
    clock.stage("train")

    say("6/9 evaluating the tuned model (4-bit base + adapter, as trained): greedy, blank images, sampled")
    topts = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=64, load_in_4bit=True, blank_images=True,
                        dtype="float32", device="cpu", tools=tools)
    model = load_for_eval(base, sft_run.adapter, topts)
    tuned = evaluate(model, data["test"], topts, out / "eval" / "tuned", desc="eval tuned")
    before_after = compare(base_eval, tuned)
    write_text_atomic(out / "eval" / "before_after.md", comparison_markdown(before_after, ("base", "tuned")))
    sft_defects = None if agent else defect_rate(model, data["test"], cfg, out / "eval" / "tuned_sampled",
                                                 "sample tuned")
    del model
    clock.stage("eval_tuned")

    final_run, dpo_report, dpo_eval, dpo_defects = sft_run, None, None, None
    if dpo:
        say(f"7/9 DPO from the SFT adapter on clean-vs-defective pairs, {cfg.accelerate_config} "
             f"across {cfg.num_processes} processes")
        dpo_report, final_run = _train(DPO_RECIPE, dpo_overrides(cfg, base, out, data, sft_run.path), cfg)
        model = load_for_eval(base, final_run.adapter, topts)
        dpo_eval = evaluate(model, data["test"], topts, out / "eval" / "dpo", desc="eval dpo")
        dpo_defects = defect_rate(model, data["test"], cfg, out / "eval" / "dpo_sampled", "sample dpo")
        write_text_atomic(out / "eval" / "sft_dpo.md", comparison_markdown(compare(tuned, dpo_eval), ("SFT", "DPO")))
        del model
        clock.stage("dpo")

    say("8/9 export: licence gate, streamed merge into bf16 (into the 4-bit rounding the QLoRA adapter trained "
         "on) proven against the 4-bit base + adapter, vLLM adapter")
    final = dpo_eval if dpo else tuned
    evaluation = {"base accuracy": base_eval["accuracy"], "QLoRA accuracy (4-bit base + adapter)": final["accuracy"],
                  "QLoRA accuracy, blank images": tuned["blank_accuracy"], "test samples": tuned["n"]}
    export = export_merge(MergeRequest(out=out / "export" / "merged", run=final_run.path, data=data["test"],
                                       samples=8, accept_license=cfg.accept_license, force=True,
                                       evaluation=evaluation, base_weights="as-trained"))
    served = export_adapter(AdapterRequest(out=out / "export" / "vllm_adapter", run=final_run.path, target="vllm",
                                           accept_license=cfg.accept_license, force=True, evaluation=evaluation))
    merged = evaluate(load_for_eval(export["out"], None, opts), data["test"], opts, out / "eval" / "merged",
                      desc="eval merged")
    clock.stage("export")

    say("9/9 report")
    report = {
        "task": cfg.task, "base_model": str(base),
        "base_accuracy": base_eval["accuracy"], "tuned_accuracy": tuned["accuracy"],
        "tuned_blank_image_accuracy": tuned["blank_accuracy"], "merged_accuracy": merged["accuracy"],
        "sft_defect_rate": sft_defects["rate"] if sft_defects else None,
        "sft_defects_by_kind": sft_defects["by_kind"] if sft_defects else None,
        "tools": tools, "base_tool_call_valid_rate": base_eval.get("tool_call_valid_rate"),
        "tuned_tool_call_valid_rate": tuned.get("tool_call_valid_rate"),
        "dpo_accuracy": dpo_eval["accuracy"] if dpo else None,
        "dpo_defect_rate": dpo_defects["rate"] if dpo else None,
        "dpo_defects_by_kind": dpo_defects["by_kind"] if dpo else None,
        "defect_sampled_replies": sft_defects["replies"] if sft_defects else None,
        "sampled_loop_rate": {"sft": sft_defects["loop_rate"] if sft_defects else None,
                              "dpo": dpo_defects["loop_rate"] if dpo else None},
        "sampled_language_mix_rate": {"sft": sft_defects["language_mix_rate"] if sft_defects else None,
                                      "dpo": dpo_defects["language_mix_rate"] if dpo else None},
        "test_samples": tuned["n"], "train_samples": built["train"]["kept"],
        "train_loss_first": sft_report["train_loss_first"], "train_loss_last": sft_report["train_loss_last"],
        "train_steps": sft_report["steps"], "world_size": sft_report["world_size"],
        "trainable_parameters": sft_report["trainable_parameters"],
        "zero3_partition": sft_report["zero3_partition"],
        "dpo_pairs": built["dpo_train"]["kept"] if dpo else None,
        "dpo_steps": dpo_report["steps"] if dpo else None,
        "dpo_reward_accuracy_last": dpo_report.get("rewards_accuracies_last") if dpo else None,
        "dpo_reward_margin_first": dpo_report.get("rewards_margins_first") if dpo else None,
        "dpo_reward_margin_last": dpo_report.get("rewards_margins_last") if dpo else None,
        "exported_run": final_run.path.name,
        "license": {k: export["license"][k] for k in ("license", "name", "commercial_use", "requires_acceptance",
                                                        "conditions", "disagreement")},
        "merge_check": export["proof"], "merge_stats": export["merge"], "vllm_serve": served["vllm_serve"],
        "diagnostics": {"base": base_eval, "tuned": tuned, **({"dpo": dpo_eval} if dpo else {})},
        "before_after": before_after,
        "base_pretrain_accuracy": base_pretrain["accuracy"],
        "stage_seconds": clock.stages, "wall_seconds": round(time.time() - clock.t0, 1),
        "config": asdict(cfg),
    }
    report["plot"] = str(_plot(report, sft_run, final_run if dpo else None, out / "report.png", cfg))
    write_json_atomic(out / "report.json", report)
    _print(report, export, out)
    return report


def _plot(report: dict, sft_run, dpo_run, png: Path, cfg: DemoConfig) -> Path:
    from .eval.report import plot_run
    from .run_folder import METRICS
    from .train.callbacks import read_metrics
    accuracies = {"base": report["base_accuracy"], "tuned": report["tuned_accuracy"],
                  "tuned\n(blank images)": report["tuned_blank_image_accuracy"]}
    if dpo_run is not None:
        accuracies["after DPO"] = report["dpo_accuracy"]
    accuracies["merged\n(bf16)"] = report["merged_accuracy"]
    defects = {"after SFT": report["sft_defect_rate"]} if report["sft_defect_rate"] is not None else None
    if dpo_run is not None:
        defects["after DPO"] = report["dpo_defect_rate"]
    return plot_run(read_metrics(sft_run.file(METRICS)), accuracies, png,
                    f"qvq-tune demo: {cfg.task} ({cfg.steps} SFT + {cfg.dpo_steps} DPO steps, "
                    f"{cfg.accelerate_config} x{cfg.num_processes})", defects=defects)


def _print(report: dict, export: dict, out: Path) -> None:
    from .eval.compare import table_rows
    from .eval.report import print_summary
    from .paths import write_text_atomic
    rows = [
        ("base accuracy (held-out test)", f"{report['base_accuracy']:.1%}"),
        ("tuned accuracy", f"{report['tuned_accuracy']:.1%}"),
        ("tuned, blank images", f"{report['tuned_blank_image_accuracy']:.1%}"),
    ]
    if report["sft_defect_rate"] is not None:
        rows.append(("defective sampled replies after SFT", f"{report['sft_defect_rate']:.1%}"))
    if report["tools"]:
        rows.append(("valid tool calls, base -> tuned", " -> ".join(
            "n/a" if v is None else f"{v:.1%}"
            for v in (report["base_tool_call_valid_rate"], report["tuned_tool_call_valid_rate"]))))
    if report["dpo_accuracy"] is not None:
        rows += [("defective sampled replies after DPO", f"{report['dpo_defect_rate']:.1%}"),
                 ("accuracy after DPO", f"{report['dpo_accuracy']:.1%}")]
    rows += [
        ("merged bf16 accuracy (unquantised base)", f"{report['merged_accuracy']:.1%}"),
        ("train loss first -> last", f"{report['train_loss_first']:.3f} -> {report['train_loss_last']:.3f}"),
        ("licence", f"{report['license']['license']} (accepted for export)"),
        ("merge proof vs base + adapter", _agree(export["proof"]["vs_base_plus_adapter"])),
        ("merged vs 4-bit base + adapter", _agree(export["proof"]["vs_4bit_base_plus_adapter"])),
        ("processes", str(report["world_size"])),
        ("wall time", f"{report['wall_seconds']:.0f} s"),
        ("report", str(out / "report.json")),
    ]
    print_summary(rows, title="qvq-tune demo")
    print_summary(table_rows(report["before_after"]), "reasoning before / after tuning",
                  columns=("metric", "base", "tuned", "delta"))
    write_text_atomic(out / "SUMMARY.txt", "\n".join(f"{k}: {v}" for k, v in report.items()) + "\n")
