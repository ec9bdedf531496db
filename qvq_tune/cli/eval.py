"""`qvq-tune eval`: generate on a built dataset and score final answers."""

from __future__ import annotations

import json

HELP = "evaluate a model (optionally + adapter) on a built dataset by generation and answer matching"


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help=HELP, description=HELP)
    p.add_argument("--model", required=True,
                   help="checkpoint folder, 'tiny' (the embedded base) or a family name (a tiny zoo model)")
    p.add_argument("--adapter", help="LoRA adapter folder (e.g. runs/NAME/adapter)")
    p.add_argument("--data", required=True, help="a folder written by `qvq-tune data build`")
    p.add_argument("--out", help="write per-sample results to this JSONL")
    p.add_argument("--limit", type=int)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--load-in-4bit", action="store_true", help="quantise the base as QLoRA trained it")
    p.add_argument("--blank-images", action="store_true", help="replace images with blank ones")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..eval.evaluate import EvalOptions, evaluate, load_for_eval
    from ..tiny.resolve import resolve_model_dir
    opts = EvalOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit,
                       blank_images=args.blank_images, load_in_4bit=args.load_in_4bit)
    em = load_for_eval(resolve_model_dir(args.model), args.adapter, opts)
    print(json.dumps(evaluate(em, args.data, opts, out_jsonl=args.out), indent=2))
    return 0
