"""The demo's DPO stage alone, from a finished demo folder (its data, its SFT run), for
checking that stage on several seeds without re-running the base, the SFT or the export.

    python scripts/demo_dpo_stage.py --demo runs/demo --name dpo_check [--set optim.lr=5e-6 ...]

Runs stage 7 exactly as `qvq-tune demo` does (the packaged `demo_dpo_zero3` recipe from the
SFT adapter, the demo's launcher preset and process count, the demo's seed), with the
given recipe overrides, then greedy accuracy on the test split and the sampled defect rate
(4 replies per test question, temperature 1, the demo's seed). Prints one JSON line with
the SFT figures from the demo's report.json beside the new DPO figures:

    {"seed": 0, "sft_accuracy": 1.0, "sft_defect_rate": 0.149, "dpo_accuracy": ...,
     "dpo_defect_rate": ..., "defects_halved": true, "accuracy_within_2_points": true, ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from qvq_tune.cli.train import parse_overrides
    from qvq_tune.demo import DPO_RECIPE, DemoConfig, _train, defect_rate, dpo_overrides
    from qvq_tune.eval.evaluate import EvalOptions, evaluate, load_for_eval

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", required=True, help="a finished `qvq-tune demo --out` folder")
    p.add_argument("--name", default="dpo_stage", help="run folder name inside the demo folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="DPO recipe override")
    args = p.parse_args(argv)
    demo = Path(args.demo).absolute()
    report = json.loads((demo / "report.json").read_text())
    config = {k: v for k, v in report["config"].items() if k in DemoConfig.__dataclass_fields__}
    cfg = DemoConfig(**{**config, "out": str(demo)})
    base = Path(report["base_model"])
    data = {split: demo / "data" / split for split in ("train", "validation", "test", "dpo_train", "dpo_validation")}
    started = time.time()
    overrides = {**dpo_overrides(cfg, base, demo, data, demo / "train"), "name": args.name,
                 **parse_overrides(args.set)}
    dpo_report, run = _train(DPO_RECIPE, overrides, cfg)
    trained = time.time() - started
    topts = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=64, load_in_4bit=True, dtype="float32",
                        device="cpu")
    model = load_for_eval(base, run.adapter, topts)
    greedy = evaluate(model, data["test"], topts, demo / "eval" / args.name, desc="eval dpo")
    defects = defect_rate(model, data["test"], cfg, demo / "eval" / f"{args.name}_sampled", "sample dpo")
    out = {"seed": cfg.seed, "overrides": {k: v for k, v in overrides.items() if not isinstance(v, str)
                                           or not v.startswith("/")},
           "sft_accuracy": report["tuned_accuracy"], "sft_defect_rate": report["sft_defect_rate"],
           "dpo_accuracy": greedy["accuracy"], "dpo_defect_rate": defects["rate"],
           "dpo_steps_run": dpo_report["steps"], "dpo_best_step": dpo_report.get("best_step"),
           "defects_halved": defects["rate"] <= report["sft_defect_rate"] / 2,
           "accuracy_within_2_points": greedy["accuracy"] >= report["tuned_accuracy"] - 0.02,
           "train_seconds": round(trained, 1), "seconds": round(time.time() - started, 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
