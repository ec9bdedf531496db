"""`qvq-tune export`: merge a run's adapter into a bf16 base, verify, and write the export folder."""

from __future__ import annotations

import json

HELP = "merge a LoRA adapter into the full-precision base (bf16), verify the merge numerically"


def add_parser(sub) -> None:
    p = sub.add_parser("export", help=HELP, description=HELP)
    p.add_argument("--run", required=True, help="run folder (runs/NAME) with adapter/ and recipe.yaml")
    p.add_argument("--out", required=True, help="export folder")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..export.run import export_run
    print(json.dumps(export_run(args.run, args.out, dtype=args.dtype), indent=2))
    return 0
