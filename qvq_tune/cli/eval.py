"""`qvq-tune eval`: generate and score (`eval --model/--run ... --data ... --out DIR`),
score replies generated elsewhere (`eval score`), compare two evaluations (`eval compare`)."""

from __future__ import annotations

import json

HELP = "evaluate a model by generation: answers, truncation, loops, language mixing, image reliance"


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help=HELP, description=HELP + ". Writes OUT/samples.jsonl, OUT/summary.json "
                       "and OUT/report.md.")
    p.add_argument("--model", help="checkpoint folder, 'tiny' (the embedded base) or a family name "
                   "(a tiny zoo model)")
    p.add_argument("--adapter", help="LoRA adapter folder (e.g. runs/NAME/adapter)")
    p.add_argument("--run", help="a run folder: base model, adapter, processor settings and reasoning format")
    p.add_argument("--data", help="a folder written by `qvq-tune data build`, or raw data files to build")
    p.add_argument("--out", help="output folder")
    p.add_argument("--limit", type=int)
    p.add_argument("--max-new-tokens", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--samples", type=int, default=1, help="replies per prompt (needs --temperature > 0)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--device", default="auto", help="auto (all GPUs, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--load-in-4bit", action="store_true", help="quantise the base as QLoRA trained it "
                   "(automatic with --run of a QLoRA run, with its recipe's quant settings)")
    p.add_argument("--quant-type", default="nf4", choices=("nf4", "fp4"), help="with --load-in-4bit")
    p.add_argument("--no-double-quant", dest="double_quant", action="store_false", help="with --load-in-4bit")
    p.add_argument("--blank-images", action="store_true",
                   help="also score with every image and video frame blanked (image reliance)")
    p.add_argument("--tools", metavar="FILE.py", help="run the tool loop: a Python file whose functions are "
                   "the tools (called by name with the call's JSON arguments); the last reply is scored")
    p.add_argument("--max-tool-turns", type=int, default=4, help="replies per prompt in the tool loop")
    p.add_argument("--tool-timeout", type=float, default=10.0, help="seconds per tool call")
    p.set_defaults(func=_run)
    actions = p.add_subparsers(dest="eval_command", metavar="ACTION")
    s = actions.add_parser("score", help="score replies generated elsewhere (no model is loaded)",
                           description="Each line of FILE: id, reply (or messages: a multi-turn transcript "
                                       "with tool calls and results), reference, and optionally tools, choices, "
                                       "reasoning, finish_reason, num_tokens, condition.")
    s.add_argument("--predictions", required=True, metavar="FILE.jsonl")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--tokenizer", metavar="MODEL_DIR", help="count reply tokens with this model's tokenizer")
    s.add_argument("--max-new-tokens", type=int, help="the budget the replies were generated with")
    s.set_defaults(func=_score)
    c = actions.add_parser("compare", help="every metric of two evaluations side by side, with its delta")
    c.add_argument("a", metavar="A", help="evaluation folder or summary.json")
    c.add_argument("b", metavar="B", help="evaluation folder or summary.json")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.set_defaults(func=_compare)


def _run(args) -> int:
    from ..errors import UserError
    from ..eval.evaluate import EvalOptions, run_eval
    from ..tiny.resolve import resolve_model_dir
    if not args.out:
        raise UserError("eval needs --out DIR (or an action: score, compare)", key="out")
    if not args.run and not (args.model and args.data):
        raise UserError("eval needs --model and --data, or --run (its data.eval, or --data)", key="data")
    opts = EvalOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit,
                       blank_images=args.blank_images, samples=args.samples, temperature=args.temperature,
                       seed=args.seed, load_in_4bit=args.load_in_4bit, quant_type=args.quant_type,
                       double_quant=args.double_quant, dtype=args.dtype, device=args.device,
                       tools=args.tools, max_tool_turns=args.max_tool_turns, tool_timeout=args.tool_timeout)
    model = resolve_model_dir(args.model) if args.model else None
    summary = run_eval(args.out, opts, model=model, adapter=args.adapter, run=args.run, data=args.data)
    print(json.dumps(summary, indent=2))
    return 0


def _score(args) -> int:
    from ..eval.predictions import score_predictions
    tokenizer = None
    if args.tokenizer:
        from ..models.loading import load_processor
        tokenizer = load_processor(args.tokenizer).tokenizer
    print(json.dumps(score_predictions(args.predictions, args.out, tokenizer=tokenizer,
                                       max_new_tokens=args.max_new_tokens), indent=2))
    return 0


def _compare(args) -> int:
    from ..eval.compare import compare, load_summary, table_rows
    rows = compare(load_summary(args.a), load_summary(args.b))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from ..eval.report import print_summary
    print_summary(table_rows(rows), "eval compare", columns=("metric", args.a, args.b, "delta"))
    return 0
