"""One round of the self-improvement loop on the tiny base's demo task, measured.

synthesise the demo's diagram task -> build -> LoRA SFT stopped early (accuracy with
headroom) -> `data pairs` from the SFT model's own samples at each temperature given ->
DPO from the SFT adapter, for each (temperature, cut, SFT term, lr) setting -> held-out
greedy accuracy (and loop / language-mixing rates) before and after. Every stage is the
library call the CLI makes; finished stages are reused, so the script can be re-run to add
settings. Prints one JSON line per result and writes OUT/results.json.

    python scripts/pairs_round.py --out /tmp/pairs_round --sft-steps 160 \
        --temperatures 0.7 1.0 --settings none:1.0:5e-5 step:0:5e-5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _recipe(out: Path, name: str, data: Path, base: Path, **over):
    from qvq_tune.recipe import apply_overrides, recipe_from_dict
    body = {"name": name, "model": str(base), "method": "lora", "dtype": "float32", "output_dir": str(out / "runs"),
            "data": {"train": str(data)}, "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "optim": {"per_device_batch_size": 16, "lr": 0.002, "warmup_steps": 30, "scheduler": "cosine",
                      "logging_steps": 10, "seed": 0},
            "launch": {"accelerate_config": "single", "num_processes": 1}, "report_to": "none"}
    return recipe_from_dict(apply_overrides(body, over))


def _eval(base: Path, adapter: Path | None, data: Path, out: Path, max_new_tokens: int) -> dict:
    from qvq_tune.eval.evaluate import EvalOptions, evaluate, load_for_eval
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    opts = EvalOptions(max_new_tokens=max_new_tokens, batch_size=64, dtype="float32", device="cpu")
    return evaluate(load_for_eval(base, adapter, opts), data, opts, out, desc=f"eval {out.name}")


def _keep(summary: dict) -> dict:
    return {k: summary.get(k) for k in ("accuracy", "no_answer_rate", "loop_rate", "language_mix_rate", "n")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/pairs_round")
    ap.add_argument("--sft-steps", type=int, default=160)
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--test-size", type=int, default=300)
    ap.add_argument("--prompts", type=int, default=500, help="training prompts sampled for pairs")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 1.0])
    ap.add_argument("--settings", nargs="+", default=["none:1.0:5e-5", "step:0:5e-5"],
                    help="CUT:SFT_WEIGHT:LR of each DPO run")
    ap.add_argument("--dpo-steps", type=int, default=100)
    ap.add_argument("--dpo-batch", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()

    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.eval.pairs import PairsOptions, make_pairs
    from qvq_tune.synth.generate import SynthConfig, generate
    from qvq_tune.tiny.pretrain import ensure_tiny_base
    from qvq_tune.train.run import train

    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}

    def record(key: str, value: dict) -> None:
        results[key] = value
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(json.dumps({key: value}), flush=True)

    base = ensure_tiny_base()
    raw = out / "raw"
    if not raw.is_dir():
        generate(SynthConfig(train=args.train_size, validation=100, test=args.test_size, defect_rate=0.3,
                             dpo=False), raw, progress=False)
    data = {}
    for split in ("train", "test"):
        data[split] = out / "built" / split
        build(BuildConfig(input=str(raw / f"{split}.jsonl"), model=str(base), out=str(data[split]),
                          reasoning="qvq"))

    t0 = time.time()
    sft = _recipe(out, f"sft{args.sft_steps}", data["train"], base, **{"optim.max_steps": args.sft_steps})
    if not (sft.run_dir / "train_report.json").is_file():
        train(sft, in_process=True, overwrite=True)
    start = _eval(base, sft.run_dir / "adapter", data["test"], out / "eval" / sft.name, args.max_new_tokens)
    record("sft", {"steps": args.sft_steps, **_keep(start), "seconds": round(time.time() - t0)})

    for temperature in args.temperatures:
        pairs_dir = out / f"pairs_T{temperature}"
        t0 = time.time()
        report = make_pairs(pairs_dir, PairsOptions(samples=args.samples, temperature=temperature,
                                                    max_new_tokens=args.max_new_tokens, limit=args.prompts,
                                                    batch_size=64, dtype="float32", device="cpu"),
                            data=data["train"], model=base, adapter=sft.run_dir / "adapter")
        record(f"pairs T={temperature}", {
            "prompts": report["prompts"], "with_pair": report["prompts_with_pair"],
            "without_pair": report["prompts_without_pair"], "pair_reasons": report["pair_reasons"],
            "sampled_accuracy": report["replies"]["accuracy"], "pass_at_n": report["replies"].get("pass_at_n"),
            "loop_rate": report["replies"]["loop_rate"], "language_mix_rate": report["replies"]["language_mix_rate"],
            "seconds": round(time.time() - t0)})
        for setting in args.settings:
            cut, sft_weight, lr = setting.split(":")
            # re-pair the same samples with this setting's cut (no sampling)
            report = make_pairs(pairs_dir, PairsOptions(samples=args.samples, temperature=temperature,
                                                        max_new_tokens=args.max_new_tokens, limit=args.prompts,
                                                        batch_size=64, dtype="float32", device="cpu",
                                                        pair_cut=cut),
                                data=data["train"], model=base, adapter=sft.run_dir / "adapter")
            name = f"dpo_T{temperature}_{cut}_sft{sft_weight}_lr{lr}_b{args.beta}_s{args.dpo_steps}"
            t0 = time.time()
            recipe = _recipe(out, name, pairs_dir, base, objective="dpo",
                             **{"dpo.start_adapter": str(sft.run_dir), "dpo.sft_weight": float(sft_weight),
                                "dpo.beta": args.beta, "optim.lr": float(lr), "optim.max_steps": args.dpo_steps,
                                "optim.per_device_batch_size": args.dpo_batch, "optim.warmup_steps": 10})
            if not (recipe.run_dir / "train_report.json").is_file():
                train(recipe, in_process=True, overwrite=True)
            after = _eval(base, recipe.run_dir / "adapter", data["test"], out / "eval" / name, args.max_new_tokens)
            record(name, {"pairs": report["pairs"], **_keep(after),
                          "delta_points": round(100 * (after["accuracy"] - start["accuracy"]), 1),
                          "seconds": round(time.time() - t0)})


if __name__ == "__main__":
    main()
