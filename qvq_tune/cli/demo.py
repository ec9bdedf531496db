"""`qvq-tune demo`: the end-to-end demo on the embedded tiny base."""

from __future__ import annotations

HELP = "run the end-to-end demo: synth data -> build -> eval -> QLoRA SFT + DPO under ZeRO-3 -> eval -> export"


def add_parser(sub) -> None:
    from ..demo import DemoConfig
    from .args import add_dataclass_arguments
    p = sub.add_parser("demo", help=HELP, description=HELP)
    add_dataclass_arguments(p, DemoConfig)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..demo import DemoConfig, run_demo
    from .args import dataclass_from_arguments
    run_demo(dataclass_from_arguments(DemoConfig, args))
    return 0
