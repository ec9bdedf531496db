"""`qvq-tune demo`: the end-to-end demo on the embedded tiny base; `--rl` runs the RL demo."""

from __future__ import annotations

HELP = "run the end-to-end demo: synth data -> build -> eval -> QLoRA SFT + DPO under ZeRO-3 -> eval -> export"
RL_HELP = ("run the RL demo instead: early-stopped LoRA SFT -> GRPO, its checkpoint chosen on a validation split "
           "-> one round of sampled pairs + DPO (its own flags below; shared flags keep the RL demo's defaults "
           "unless given)")


def add_parser(sub) -> None:
    from ..demo import DemoConfig
    from ..demo_rl import RLDemoConfig
    from .args import add_dataclass_arguments
    p = sub.add_parser("demo", help=HELP, description=HELP)
    add_dataclass_arguments(p, DemoConfig)
    p.add_argument("--rl", action="store_true", help=RL_HELP)
    add_dataclass_arguments(p.add_argument_group("RL demo (--rl)"), rl_only(RLDemoConfig, DemoConfig))
    p.set_defaults(func=_run)


def rl_only(rl_cls, demo_cls):
    """The RL demo's config with only the fields the default demo has no flag for."""
    import dataclasses
    shared = {f.name for f in dataclasses.fields(demo_cls)}
    fields = [(f.name, f.type, f) for f in dataclasses.fields(rl_cls) if f.name not in shared]
    return dataclasses.make_dataclass("RLOnly", fields)


def rl_config(args):
    """The RL demo's config: its own flags, and each flag shared with the default demo where it
    was given (differs from the default demo's default), else the RL demo's default."""
    import dataclasses

    from ..demo import DemoConfig
    from ..demo_rl import RLDemoConfig
    demo_defaults = {f.name: f.default for f in dataclasses.fields(DemoConfig)}
    values = {}
    for f in dataclasses.fields(RLDemoConfig):
        value = getattr(args, f.name)
        if f.name in demo_defaults and value == demo_defaults[f.name]:
            continue
        parse = f.metadata.get("parse")
        values[f.name] = parse(value) if parse is not None and isinstance(value, str) else value
    return RLDemoConfig(**values)


def _run(args) -> int:
    if args.rl:
        from ..demo_rl import run_rl_demo
        run_rl_demo(rl_config(args))
        return 0
    from ..demo import DemoConfig, run_demo
    from .args import dataclass_from_arguments
    run_demo(dataclass_from_arguments(DemoConfig, args))
    return 0
