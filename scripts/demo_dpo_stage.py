"""The demo's DPO stage alone, from a finished demo folder (its data, its SFT run), for
checking that stage on several seeds without re-running the base, the SFT or the export.

    python scripts/demo_dpo_stage.py --demo runs/demo --name dpo_check [--set optim.lr=5e-6 ...]

Runs stage 7 exactly as `qvq-tune demo` does (the packaged `demo_dpo_zero3` recipe from the
SFT adapter, the demo's launcher preset and process count, the demo's seed), with the
given recipe overrides, then greedy accuracy on the test split and the sampled defect rate
(4 replies per test question, temperature 1, the demo's seed). Prints one JSON line (accuracy, defect_rate, with the SFT
figures of the demo's report.json when it has one). `--sft-only` measures the SFT adapter
the same way, for a demo folder whose later stages did not run:

    python scripts/demo_dpo_stage.py --demo runs/demo --name sft_check --sft-only
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
    p.add_argument("--demo", required=True, help="a `qvq-tune demo --out` folder whose SFT stage finished")
    p.add_argument("--name", default="dpo_stage", help="run folder name inside the demo folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="DPO recipe override")
    p.add_argument("--seed", type=int, help="the demo's seed (default: its report.json's)")
    p.add_argument("--defect-samples", type=int, help="sampled replies per test prompt (default: the demo's)")
    p.add_argument("--sft-only", action="store_true",
                   help="measure the SFT adapter (greedy accuracy, defect rate) instead of training DPO")
    args = p.parse_args(argv)
    demo = Path(args.demo).absolute()
    report_path = demo / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    config = {k: v for k, v in (report or {}).get("config", {}).items() if k in DemoConfig.__dataclass_fields__}
    config.update({k: v for k, v in (("seed", args.seed), ("defect_samples", args.defect_samples)) if v is not None})
    cfg = DemoConfig(**{**config, "out": str(demo)})
    base = Path(report["base_model"] if report else json.loads((demo / "train" / "base_model.json").read_text())["path"])
    data = {split: demo / "data" / split for split in ("train", "test", "dpo_train")}
    started = time.time()
    topts = EvalOptions(max_new_tokens=cfg.max_new_tokens, batch_size=64, load_in_4bit=True, dtype="float32",
                        device="cpu")
    overrides, dpo_report = {}, {}
    if args.sft_only:
        adapter = demo / "train" / "adapter"
    else:
        overrides = {**dpo_overrides(cfg, base, demo, data, demo / "train"), "name": args.name,
                     **parse_overrides(args.set)}
        dpo_report, run = _train(DPO_RECIPE, overrides, cfg)
        adapter = run.adapter
    trained = time.time() - started
    model = load_for_eval(base, adapter, topts)
    greedy = evaluate(model, data["test"], topts, demo / "eval" / args.name, desc=f"eval {args.name}")
    defects = defect_rate(model, data["test"], cfg, demo / "eval" / f"{args.name}_sampled", f"sample {args.name}")
    out = {"seed": cfg.seed, "stage": "sft" if args.sft_only else "dpo", "defect_samples": cfg.defect_samples,
           "overrides": {k: v for k, v in overrides.items() if not (isinstance(v, str) and v.startswith("/"))},
           "accuracy": greedy["accuracy"], "n": greedy["n"], "defect_rate": defects["rate"],
           "defects_by_kind": defects["by_kind"], "replies": defects["replies"],
           "dpo_steps_run": dpo_report.get("steps"), "train_seconds": round(trained, 1),
           "seconds": round(time.time() - started, 1)}
    if report:
        out.update(sft_accuracy=report["tuned_accuracy"], sft_defect_rate=report["sft_defect_rate"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
