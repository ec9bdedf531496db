"""`qvq-tune demo`: the end-to-end demo on the embedded tiny base."""

from __future__ import annotations

HELP = "run the end-to-end demo: synth data -> build -> eval -> QLoRA ZeRO-3 -> eval -> export"


def add_parser(sub) -> None:
    from ..demo import DemoConfig
    d = DemoConfig()
    p = sub.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument("--task", default=d.task, help="synthetic task (see `qvq-tune synth --help`)")
    p.add_argument("--train-size", type=int, default=d.train_size)
    p.add_argument("--test-size", type=int, default=d.test_size)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--per-device-batch-size", type=int, default=d.per_device_batch_size)
    p.add_argument("--num-processes", type=int, default=d.num_processes)
    p.add_argument("--accelerate-config", default=d.accelerate_config,
                   help="launcher preset (single, ddp, zero2, zero3, zero3_offload) or a YAML path")
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..demo import DemoConfig, run_demo
    cfg = DemoConfig(out=args.out, task=args.task, train_size=args.train_size, test_size=args.test_size,
                     steps=args.steps, per_device_batch_size=args.per_device_batch_size,
                     num_processes=args.num_processes, accelerate_config=args.accelerate_config,
                     seed=args.seed)
    run_demo(cfg)
    return 0
