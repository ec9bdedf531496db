"""`qvq-tune synth`: write a synthetic "proprietary diagram" task (native JSONL + PNGs)."""

from __future__ import annotations

import json

HELP = "write a synthetic diagram task (train/validation/test + DPO pairs) as native JSONL"


def add_parser(sub) -> None:
    from ..synth.generate import SynthConfig
    from ..synth.tasks import TASKS
    d = SynthConfig()
    tasks = "; ".join(f"{t.name}: {t.description}" for t in TASKS.values())
    p = sub.add_parser("synth", help=HELP, description=f"{HELP}. Tasks: {tasks}.")
    p.add_argument("--task", default=d.task, choices=sorted(TASKS))
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=d.train)
    p.add_argument("--validation", type=int, default=d.validation)
    p.add_argument("--test", type=int, default=d.test)
    p.add_argument("--no-dpo", action="store_true", help="skip the DPO preference pairs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..synth.generate import SynthConfig, generate
    cfg = SynthConfig(task=args.task, train=args.train, validation=args.validation, test=args.test,
                      dpo=not args.no_dpo, seed=args.seed)
    print(json.dumps(generate(cfg, args.out), indent=2))
    return 0
