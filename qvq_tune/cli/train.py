"""`qvq-tune train`: run a YAML recipe's objective (SFT or DPO) under accelerate (DDP / ZeRO-2 / ZeRO-3)."""

from __future__ import annotations

import json

HELP = "fine-tune (QLoRA / LoRA / full SFT, DPO) from a YAML recipe, launched with accelerate"


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP)
    p.add_argument("--recipe", required=True,
                   help="YAML recipe file, or the name of a packaged recipe (e.g. demo_qlora_zero3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set optim.max_steps=50 (repeatable)")
    p.add_argument("--check", action="store_true",
                   help="validate the recipe, its model folder and datasets without loading a model, and exit")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue an interrupted run from its last complete checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--prepare", action="store_true",
                   help="check and write the run folder, print the command each node of a multi-node job "
                        "runs, and exit (see README: Multi-node)")
    nodes = p.add_argument_group("multi-node jobs (with --prepare)")
    nodes.add_argument("--nodes", type=int, metavar="N", help="machines (default: the preset's num_machines)")
    nodes.add_argument("--gpus-per-node", type=int, metavar="G",
                       help="ranks per node, on GPUs (sets launch.num_processes to N x G)")
    nodes.add_argument("--slurm", action="store_true", help="also write runs/NAME/launch.sbatch")
    nodes.add_argument("--partition", metavar="P", help="Slurm partition (with --slurm)")
    nodes.add_argument("--time", metavar="T", help="Slurm time limit, e.g. 24:00:00 (with --slurm)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.set_defaults(func=_run)


def parse_overrides(items: list[str]) -> dict:
    import yaml

    from ..errors import UserError
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}", key="--set")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _run(args) -> int:
    import dataclasses

    from ..errors import UserError
    from ..recipe import load_recipe, recipe_path
    from ..tiny.resolve import needs_building, resolve_model_dir
    from ..train.run import check, train

    source = str(recipe_path(args.recipe))
    node_flags = [f for f in ("nodes", "gpus_per_node", "slurm", "partition", "time") if getattr(args, f)]
    if node_flags and not args.prepare:
        raise UserError(f"--{node_flags[0].replace('_', '-')} needs --prepare", key="--prepare")
    recipe = load_recipe(source, parse_overrides(args.set))
    # Everything checkable without the model first: the tiny base (or a zoo model) a recipe
    # names is built on first use, which takes minutes; a missing dataset must not wait for it.
    built = not needs_building(recipe.model)
    if built:
        recipe = dataclasses.replace(recipe, model=str(resolve_model_dir(recipe.model)))
    check(recipe, source, model_built=built)
    if args.check:
        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    recipe = dataclasses.replace(recipe, model=str(resolve_model_dir(recipe.model)))
    if args.prepare:
        return _prepare(recipe, args, source)
    report = train(recipe, resume=args.resume, overwrite=args.overwrite, source=source)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _table(report)
    return 0


def _prepare(recipe, args, source: str) -> int:
    from ..slurm import SlurmOptions
    from ..train.nodes import describe, prepare_nodes, shape_recipe
    from ..train.run import prepare

    slurm = SlurmOptions(partition=args.partition, time=args.time) if args.slurm else None
    recipe, nodes = shape_recipe(recipe, args.nodes, args.gpus_per_node)
    recipe, run, _ = prepare(recipe, resume=args.resume, overwrite=args.overwrite, source=source)
    info = prepare_nodes(recipe, run, nodes, gpus=True if args.gpus_per_node else None, slurm=slurm)
    print(json.dumps(info, indent=2) if args.json else describe(info))
    return 0


def _table(report: dict) -> None:
    from ..eval.report import print_summary
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in report.items()
            if v is not None and not isinstance(v, (dict, list))]
    print_summary(rows, title=f"qvq-tune train: {report.get('objective')} ({report.get('method')})")
