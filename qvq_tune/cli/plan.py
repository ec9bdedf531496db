"""`qvq-tune plan`: will a run fit? Per-GPU memory by term, a verdict, and what to change."""

from __future__ import annotations

import json

HELP = "estimate per-GPU memory of a fine-tuning run (weights, adapters, optimizer, activations) and whether it fits"


def add_parser(sub) -> None:
    from ..train.plan import PlanRequest
    from .args import add_dataclass_arguments
    p = sub.add_parser("plan", help=HELP, description=HELP)
    add_dataclass_arguments(p, PlanRequest)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..eval.report import print_summary
    from ..train.plan import PlanRequest, plan
    from .args import dataclass_from_arguments
    result = plan(dataclass_from_arguments(PlanRequest, args))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    req = result.request
    rows = [(k.replace("_", " "), f"{v:.2f} GB") for k, v in result.gb.items()]
    unit = "process" if req.device == "cpu" else "GPU"
    rows += [(f"total per {unit}", f"{result.total_gb:.1f} GB of {req.gpu_mem:g}"),
             ("trainable parameters", f"{result.parameters['trainable'] / 1e6:,.1f} M")]
    verdict = (f"{req.model} {req.method.upper() if req.method == 'qlora' else req.method}, {req.seq_len}-token "
               f"samples: {'fits' if result.fits else 'does NOT fit'} {req.gpus} x {req.gpu_mem:g} GB"
               + (f" with ZeRO-{req.zero}" if req.zero else "") + (" and offload" if req.offload else "")
               + (" with checkpointing" if req.checkpointing else ""))
    print_summary(rows, title=f"qvq-tune plan (per {unit})")
    print(verdict)
    for line in result.advice:
        print(f"  - {line}")
    return 0
