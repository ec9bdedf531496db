"""The reinforcement-learning demo (`qvq-tune demo --rl`): the self-improvement loop on the tiny base.

synthesise a diagram task (train / validation / test) -> build -> LoRA SFT with a
checkpoint every few steps, stopped early: the checkpoint whose VALIDATION accuracy is
nearest the target start (inside the band that leaves headroom) -> GRPO from it (TRL's
GRPOTrainer, `objective: grpo`) with a checkpoint every K steps -> each checkpoint's greedy
accuracy on the validation split, the best one chosen (never by the test split) -> the
chosen checkpoint's test accuracy, on real and on blank images -> sampled replies'
defect rates (loops, language mixing) before and after -> one round of sampled
preference pairs from the start model's own replies (`data pairs`, `eval.pairs.make_pairs`)
-> DPO with an SFT term from the start adapter -> its test accuracy -> report.json + PNG +
table. Every stage is the library call the CLI makes; the helpers are `demo.py`'s.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .demo import Clock, defect_rate, say
from .errors import UserError
from .paths import write_json_atomic


@dataclass
class RLDemoConfig:
    out: str = field(default="runs/demo_rl", metadata={"help": "output folder"})
    model: str = field(default="tiny", metadata={"help": "base model: tiny (the embedded base) or a folder"})
    task: str = "parts_cost"
    train_size: int = 2000
    validation_size: int = field(default=300, metadata={"help": "records that choose the checkpoints"})
    test_size: int = field(default=300, metadata={"help": "held-out records, scored once per model"})
    defect_rate: float = field(default=0.3, metadata={"help": "share of SFT traces with a loop or language mix"})
    seed: int = 0
    max_new_tokens: int = 64
    # LoRA SFT, stopped early where the start leaves headroom
    sft_steps: int = 200
    sft_check_every: int = 20
    sft_batch_size: int = 32
    sft_lr: float = 2e-3
    start_min: float = field(default=0.3, metadata={"help": "lowest validation accuracy of the SFT start"})
    start_max: float = field(default=0.7, metadata={"help": "highest validation accuracy of the SFT start"})
    start_target: float = field(default=0.4, metadata={
        "help": "the SFT checkpoint whose validation accuracy is nearest this (within the band) is the start"})
    # GRPO
    grpo_steps: int = 250
    grpo_check_every: int = 25
    grpo_prompts_per_step: int = 8
    num_generations: int = 8
    grpo_temperature: float = 0.7
    grpo_lr: float = 1e-4
    rewards: tuple[str, ...] = field(default=("correct",), metadata={
        "help": "GRPO rewards, comma-separated (train/rewards.py)", "parse": lambda text: tuple(text.split(","))})
    # one round of sampled pairs + DPO (with an SFT term) from the start adapter
    pairs_prompts: int = 384
    pairs_samples: int = 8
    pairs_temperature: float = 0.7
    pair_cut: str = "none"
    pairs_per_prompt: int = 1
    dpo_steps: int = 50
    dpo_batch_size: int = 8
    dpo_lr: float = 1e-4
    dpo_beta: float = 0.1
    dpo_sft_weight: float = 1.0
    defect_samples: int = field(default=2, metadata={"help": "sampled replies (temperature 1) per test prompt"})
    batch_size: int = field(default=64, metadata={"help": "prompts per generate call in evaluations"})

    def __post_init__(self):
        for key in ("train_size", "validation_size", "test_size", "max_new_tokens", "sft_steps", "sft_check_every",
                    "sft_batch_size", "grpo_steps", "grpo_check_every", "grpo_prompts_per_step", "pairs_prompts",
                    "pairs_per_prompt", "dpo_batch_size", "defect_samples", "batch_size"):
            if getattr(self, key) < 1:
                raise UserError(f"--{key.replace('_', '-')} must be >= 1", key=key)
        if self.dpo_steps < 0:
            raise UserError("--dpo-steps must be >= 0", key="dpo_steps")
        if not 0 <= self.start_min < self.start_max <= 1:
            raise UserError("--start-min and --start-max must be accuracies, min < max, in [0, 1]", key="start_min")
        if not 0 <= self.defect_rate <= 1:
            raise UserError("--defect-rate must be in [0, 1]", key="defect_rate")
        from .synth.tasks import TASKS
        if self.task not in TASKS or TASKS[self.task].tools:
            raise UserError(f"--task {self.task!r} must be one of the tool-free synthetic tasks", key="task")


def adapter_stamp(adapter) -> str | None:
    """Which adapter weights were scored: their file's size and modification time."""
    if adapter is None:
        return None
    weights = Path(adapter) / "adapter_model.safetensors"
    return f"{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights.is_file() else str(adapter)


def choose(scores: dict[int, float]) -> int:
    """The step with the best validation accuracy (the earliest on a tie)."""
    return max(sorted(scores), key=lambda step: scores[step])


def choose_start(scores: dict[int, float], band: tuple[float, float], target: float) -> int:
    """The SFT checkpoint to start RL from: inside the band, nearest the target (later on a tie);
    when none lies inside, the one nearest the band."""
    lo, hi = band

    def distance(step):
        acc = scores[step]
        return (0 if lo <= acc <= hi else 1, abs(acc - target), -step)
    return min(scores, key=distance)


class Stages:
    """What the stages share: the base, the built splits, the eval options and the output folder."""

    def __init__(self, cfg: RLDemoConfig, base: Path, data: dict[str, Path], out: Path):
        from .eval.evaluate import EvalOptions
        self.cfg, self.base, self.data, self.out = cfg, base, data, out
        self.greedy = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, dtype="float32",
                                  device="cpu", seed=cfg.seed)
        self.with_blank = EvalOptions(**{**asdict(self.greedy), "blank_images": True})

    def recipe(self, name: str, objective: str, optim: dict, **sections):
        from .recipe import recipe_from_dict
        return recipe_from_dict({
            "name": name, "objective": objective, "model": str(self.base), "method": "lora", "dtype": "float32",
            "output_dir": str(self.out / "runs"), "data": {"train": str(sections.pop("train", self.data["train"]))},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "optim": {"seed": self.cfg.seed, "scheduler": "cosine", "warmup_steps": 10, "logging_steps": 5, **optim},
            "launch": {"accelerate_config": "single", "num_processes": 1}, "report_to": "none", **sections})

    def train(self, recipe) -> dict:
        """Train, or reuse a finished run of the same recipe on the same data (its build or
        pairs report unchanged) in the output folder: a re-run with other settings for a
        later stage starts there."""
        from .run_folder import RunFolder
        from .train.run import train
        report = Path(recipe.run_dir) / "train_report.json"
        stamp_file = self.out / "reuse" / f"{recipe.name}.json"
        data_stamp = hashlib.sha256((Path(recipe.data.train) / "report.json").read_bytes()).hexdigest()
        if report.is_file() and (Path(recipe.run_dir) / "recipe.yaml").is_file() and stamp_file.is_file() \
                and json.loads(stamp_file.read_text()) == {"data": data_stamp} \
                and RunFolder(recipe.run_dir).recipe() == recipe:
            say(f"reusing the finished run {recipe.run_dir} (same recipe and data)")
            return json.loads(report.read_text())
        stamp_file.unlink(missing_ok=True)
        result = train(recipe, in_process=True, overwrite=True)
        write_json_atomic(stamp_file, {"data": data_stamp})
        return result

    def evaluate(self, adapter, split: str, name: str, *, blank: bool = False) -> dict:
        """Greedy evaluation of base + adapter on a split (reused when the same adapter
        files were scored on the same split with the same options)."""
        from .eval.evaluate import evaluate, load_for_eval
        opts = self.with_blank if blank else self.greedy
        folder, stamp = self.out / "eval" / name, adapter_stamp(adapter)
        if (folder / "summary.json").is_file():
            done = json.loads((folder / "summary.json").read_text())
            if done["settings"].get("adapter_stamp") == stamp and done["settings"]["data"] == str(self.data[split]) \
                    and done["settings"]["options"] == asdict(opts):
                return {k: v for k, v in done.items() if k != "settings"}
        em = load_for_eval(self.base, adapter, opts)
        return evaluate(em, self.data[split], opts, folder, desc=f"{name} ({split})",
                        settings={"adapter_stamp": stamp})

    def sampled(self, adapter, name: str) -> dict:
        from .eval.evaluate import load_for_eval
        em = load_for_eval(self.base, adapter, self.greedy)
        return defect_rate(em, self.data["test"], self.cfg, self.out / "eval" / name, f"sample {name}")

    def validate_checkpoints(self, run, prefix: str) -> dict[int, float]:
        """Greedy accuracy on the validation split of every complete checkpoint of a run."""
        scores = {}
        for ckpt in run.checkpoints(complete=True):
            step = int(ckpt.name.split("-")[-1])
            scores[step] = self.evaluate(ckpt, "validation", f"{prefix}_validation/step-{step}")["accuracy"]
        if not scores:
            raise UserError(f"{run.path}: no complete checkpoint to choose from")
        return scores


def sft_recipe(s: Stages):
    cfg = s.cfg
    return s.recipe("sft", "sft", {"max_steps": cfg.sft_steps, "per_device_batch_size": cfg.sft_batch_size,
                                   "lr": cfg.sft_lr, "warmup_steps": min(30, cfg.sft_steps // 4),
                                   "save_steps": cfg.sft_check_every})


def grpo_recipe(s: Stages, start: Path):
    cfg = s.cfg
    return s.recipe("grpo", "grpo", {
        "max_steps": cfg.grpo_steps, "per_device_batch_size": cfg.grpo_prompts_per_step * cfg.num_generations,
        "lr": cfg.grpo_lr, "scheduler": "constant_with_warmup", "warmup_steps": min(10, cfg.grpo_steps // 4),
        "save_steps": cfg.grpo_check_every},
        grpo={"num_generations": cfg.num_generations, "max_completion_tokens": cfg.max_new_tokens,
              "temperature": cfg.grpo_temperature, "beta": 0.0, "rewards": list(cfg.rewards),
              "start_adapter": str(start)})


def dpo_recipe(s: Stages, start: Path, pairs_dir: Path):
    cfg = s.cfg
    return s.recipe("dpo", "dpo", {"max_steps": cfg.dpo_steps, "per_device_batch_size": cfg.dpo_batch_size,
                                   "lr": cfg.dpo_lr, "warmup_steps": min(10, cfg.dpo_steps // 4)},
                    train=pairs_dir, dpo={"beta": cfg.dpo_beta, "sft_weight": cfg.dpo_sft_weight,
                                          "start_adapter": str(start)})


def check_recipes(cfg: RLDemoConfig, out: Path) -> None:
    """The three recipes with the demo's settings, validated before the base is built or any data made."""
    from .errors import UserError as Refused
    from .recipe import RecipeValueError
    s = Stages(cfg, Path(cfg.model), {split: out / "data" / split for split in ("train", "validation", "test")},
               out)
    try:
        sft_recipe(s)
        grpo_recipe(s, out / "start")
        if cfg.dpo_steps:
            dpo_recipe(s, out / "start", out / "pairs")
    except RecipeValueError as exc:
        raise Refused(f"demo --rl: {exc}") from None


def run_rl_demo(cfg: RLDemoConfig) -> dict:
    from .data.build import BuildConfig, build
    from .eval.pairs import PairsOptions, make_pairs
    from .run_folder import RunFolder
    from .synth.generate import SynthConfig, generate
    from .synth.tasks import DEFECTS
    from .tiny.resolve import resolve_model_dir

    out = Path(cfg.out).absolute()
    check_recipes(cfg, out)
    clock = Clock()
    out.mkdir(parents=True, exist_ok=True)
    say("1/8 base model")
    base = resolve_model_dir(cfg.model)
    clock.stage("base")

    say(f"2/8 synthesising '{cfg.task}' (train / validation / test) and building")
    raw = out / "data" / "raw"
    synth = SynthConfig(task=cfg.task, train=cfg.train_size, validation=cfg.validation_size, test=cfg.test_size,
                        seed=cfg.seed, defect_rate=cfg.defect_rate, dpo=False, dpo_kinds=DEFECTS)
    made = out / "data" / "synth_config.json"
    if not (made.is_file() and json.loads(made.read_text()) == json.loads(json.dumps(asdict(synth)))):
        made.unlink(missing_ok=True)
        generate(synth, raw, progress=False)          # else the same files: the builds are reused as they are
        write_json_atomic(made, asdict(synth))
    data = {split: out / "data" / split for split in ("train", "validation", "test")}
    built = {split: build(BuildConfig(input=str(raw / f"{split}.jsonl"), model=str(base), out=str(data[split]),
                                      reasoning="qvq")) for split in data}
    s = Stages(cfg, base, data, out)
    base_eval = s.evaluate(None, "test", "base", blank=True)
    clock.stage("data")

    say(f"3/8 LoRA SFT, a checkpoint every {cfg.sft_check_every} steps; the start is chosen on validation")
    sft = sft_recipe(s)
    s.train(sft)
    sft_validation = s.validate_checkpoints(RunFolder(sft.run_dir), "sft")
    start_step = choose_start(sft_validation, (cfg.start_min, cfg.start_max), cfg.start_target)
    start = RunFolder(sft.run_dir).path / "checkpoints" / f"checkpoint-{start_step}"
    start_eval = s.evaluate(start, "test", "start", blank=True)
    start_defects = s.sampled(start, "start_sampled")
    clock.stage("sft")

    say(f"4/8 GRPO from the SFT checkpoint of step {start_step}: {cfg.grpo_prompts_per_step} prompts x "
        f"{cfg.num_generations} replies per step, temperature {cfg.grpo_temperature}")
    grpo = grpo_recipe(s, start)
    grpo_report = s.train(grpo)
    clock.stage("grpo")

    say(f"5/8 choosing the GRPO checkpoint on the validation split ({cfg.validation_size} diagrams)")
    grpo_run = RunFolder(grpo.run_dir)
    grpo_validation = s.validate_checkpoints(grpo_run, "grpo")
    chosen_step = choose(grpo_validation)
    chosen = grpo_run.path / "checkpoints" / f"checkpoint-{chosen_step}"
    grpo_eval = s.evaluate(chosen, "test", "grpo", blank=True)
    grpo_defects = s.sampled(chosen, "grpo_sampled")
    clock.stage("grpo_eval")

    say(f"6/8 sampled pairs: {cfg.pairs_samples} replies to each of {cfg.pairs_prompts} training prompts "
        f"from the start model, temperature {cfg.pairs_temperature}")
    pairs_dir = out / "pairs"
    pairs = make_pairs(pairs_dir, PairsOptions(samples=cfg.pairs_samples, temperature=cfg.pairs_temperature,
                                               max_new_tokens=cfg.max_new_tokens, pair_cut=cfg.pair_cut,
                                               pairs_per_prompt=cfg.pairs_per_prompt,
                                               seed=cfg.seed, batch_size=cfg.batch_size, limit=cfg.pairs_prompts,
                                               dtype="float32", device="cpu"),
                       data=data["train"], model=base, adapter=start, log=say)
    clock.stage("pairs")

    dpo_eval, dpo_defects, dpo_report = None, None, None
    if pairs["pairs"] and cfg.dpo_steps:
        say(f"7/8 DPO (+ SFT term x{cfg.dpo_sft_weight}) on {pairs['pairs']} pairs from the start adapter")
        dpo = dpo_recipe(s, start, pairs_dir)
        dpo_report = s.train(dpo)
        dpo_eval = s.evaluate(RunFolder(dpo.run_dir).adapter, "test", "pairs_dpo")
        dpo_defects = s.sampled(RunFolder(dpo.run_dir).adapter, "pairs_dpo_sampled")
    else:
        say("7/8 no DPO: the sampled replies gave no pair" if not pairs["pairs"] else "7/8 no DPO (--dpo-steps 0)")
    clock.stage("pairs_dpo")

    say("8/8 report")
    report = {
        "task": cfg.task, "base_model": str(base), "train_samples": built["train"]["kept"],
        "validation_samples": built["validation"]["kept"], "test_samples": built["test"]["kept"],
        "base_accuracy": base_eval["accuracy"], "base_blank_image_accuracy": base_eval["blank_accuracy"],
        "sft_validation": sft_validation, "rl_start_step": start_step,
        "rl_start_accuracy": start_eval["accuracy"], "rl_start_blank_image_accuracy": start_eval["blank_accuracy"],
        "grpo_validation": grpo_validation, "grpo_chosen_step": chosen_step,
        "grpo_accuracy": grpo_eval["accuracy"], "grpo_blank_image_accuracy": grpo_eval["blank_accuracy"],
        "grpo_steps": grpo_report["steps"],
        "grpo_correct_reward_first": grpo_report.get("rewards_correct_mean_first"),
        "grpo_correct_reward_last": grpo_report.get("rewards_correct_mean_last"),
        "grpo_zero_spread_last": grpo_report.get("frac_reward_zero_std_last"),
        "pairs_made": pairs["pairs"], "pairs_prompts": pairs["prompts"],
        "pairs_without_pair": pairs["prompts_without_pair"], "pairs_sampled_accuracy": pairs["replies"]["accuracy"],
        "pairs_accuracy": dpo_eval["accuracy"] if dpo_eval else None,
        "dpo_steps": dpo_report["steps"] if dpo_report else 0,
        "sampled_loop_rate": {"start": start_defects["loop_rate"], "grpo": grpo_defects["loop_rate"],
                              "pairs_dpo": dpo_defects["loop_rate"] if dpo_defects else None},
        "sampled_language_mix_rate": {"start": start_defects["language_mix_rate"],
                                      "grpo": grpo_defects["language_mix_rate"],
                                      "pairs_dpo": dpo_defects["language_mix_rate"] if dpo_defects else None},
        "sampled_defect_rate": {"start": start_defects["rate"], "grpo": grpo_defects["rate"],
                                "pairs_dpo": dpo_defects["rate"] if dpo_defects else None},
        "sampled_replies": start_defects["replies"],
        "diagnostics": {"base": base_eval, "start": start_eval, "grpo": grpo_eval,
                        **({"pairs_dpo": dpo_eval} if dpo_eval else {})},
        "stage_seconds": clock.stages, "wall_seconds": round(time.time() - clock.t0, 1),
        "config": asdict(cfg),
    }
    report["plot"] = str(plot(report, grpo_run, out / "report.png"))
    write_json_atomic(out / "report.json", report)
    print_table(report, out)
    return report


def plot(report: dict, grpo_run, png: Path) -> Path:
    """Validation accuracy per checkpoint (SFT, then GRPO) beside the correctness reward;
    test accuracies; sampled defect rates."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .run_folder import METRICS
    from .train.callbacks import read_metrics
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4))
    sft_end = max(report["sft_validation"])
    ax1.plot(list(report["sft_validation"]), list(report["sft_validation"].values()), marker="o", label="SFT (val)")
    steps = [report["rl_start_step"] + s for s in report["grpo_validation"]]
    ax1.plot(steps, list(report["grpo_validation"].values()), marker="o", color="tab:green", label="GRPO (val)")
    ax1.axvline(report["rl_start_step"] + report["grpo_chosen_step"], color="tab:green", ls=":", label="chosen")
    reward = [(report["rl_start_step"] + m["step"], m["rewards/correct/mean"])
              for m in read_metrics(grpo_run.file(METRICS)) if "rewards/correct/mean" in m]
    if reward:
        ax1.plot(*zip(*reward), color="tab:gray", alpha=0.6, label="GRPO correct reward (sampled)")
    ax1.set(xlabel=f"step (GRPO from SFT step {report['rl_start_step']}; SFT ran to {sft_end})", ylim=(0, 1),
            ylabel="accuracy", title="validation accuracy per checkpoint")
    ax1.legend(fontsize=7)
    bars = {"base": report["base_accuracy"], "RL start\n(SFT)": report["rl_start_accuracy"],
            "start,\nblank": report["rl_start_blank_image_accuracy"], "GRPO": report["grpo_accuracy"],
            "GRPO,\nblank": report["grpo_blank_image_accuracy"]}
    if report["pairs_accuracy"] is not None:
        bars["pairs +\nDPO"] = report["pairs_accuracy"]
    drawn = ax2.bar(list(bars), list(bars.values()), color="tab:blue")
    for bar, v in zip(drawn, bars.values()):
        ax2.text(bar.get_x() + bar.get_width() / 2, v + 0.02, f"{v:.1%}", ha="center", fontsize=8)
    ax2.set(ylim=(0, 1.1), ylabel="test accuracy (greedy)", title="held-out test")
    names = [k for k, v in report["sampled_loop_rate"].items() if v is not None]
    x = range(len(names))
    ax3.bar([i - 0.2 for i in x], [report["sampled_loop_rate"][k] for k in names], 0.4, label="loop")
    ax3.bar([i + 0.2 for i in x], [report["sampled_language_mix_rate"][k] for k in names], 0.4, label="language mix")
    ax3.set_xticks(list(x), names)
    ax3.set(ylabel="share of sampled replies (T=1)", title="sampled defects")
    ax3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def print_table(report: dict, out: Path) -> None:
    from .eval.report import print_summary

    def pct(value):
        return "n/a" if value is None else f"{value:.1%}"
    loops, mixes = report["sampled_loop_rate"], report["sampled_language_mix_rate"]
    rows = [
        ("base accuracy, real / blank images", f"{pct(report['base_accuracy'])} / "
                                               f"{pct(report['base_blank_image_accuracy'])}"),
        (f"RL start (SFT step {report['rl_start_step']}), real / blank",
         f"{pct(report['rl_start_accuracy'])} / {pct(report['rl_start_blank_image_accuracy'])}"),
        (f"GRPO (step {report['grpo_chosen_step']}, chosen on validation), real / blank",
         f"{pct(report['grpo_accuracy'])} / {pct(report['grpo_blank_image_accuracy'])}"),
        (f"sampled pairs ({report['pairs_made']}) + DPO", pct(report["pairs_accuracy"])),
        ("sampled loop rate, start -> GRPO -> pairs+DPO", " -> ".join(pct(v) for v in loops.values())),
        ("sampled language-mix rate, start -> GRPO -> pairs+DPO", " -> ".join(pct(v) for v in mixes.values())),
        ("stage seconds", ", ".join(f"{k} {v:.0f}" for k, v in report["stage_seconds"].items())),
        ("wall time", f"{report['wall_seconds']:.0f} s"),
        ("report", str(out / "report.json")),
    ]
    print_summary(rows, title="qvq-tune demo --rl")
