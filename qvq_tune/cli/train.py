"""`qvq-tune train`: run a YAML recipe's objective under accelerate (DDP / ZeRO-2 / ZeRO-3)."""

from __future__ import annotations

import json

HELP = "fine-tune (QLoRA / LoRA / full SFT) from a YAML recipe, launched with accelerate"


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP)
    p.add_argument("--recipe", required=True,
                   help="YAML recipe file, or the name of a packaged recipe (e.g. demo_qlora_zero3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set optim.max_steps=50 (repeatable)")
    p.add_argument("--check", action="store_true", help="validate the recipe and exit")
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

    from ..models.detect import detect
    from ..tiny.resolve import TINY, resolve_model_dir
    from ..train.config import load_recipe
    from ..train.launch import resolve_accelerate_config
    from ..train.run import train

    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    resolve_accelerate_config(recipe.launch.accelerate_config)
    if recipe.model != TINY:
        detect(recipe.model)
    if args.check:
        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    # Build the tiny base once, here, before any worker starts.
    recipe = dataclasses.replace(recipe, model=str(resolve_model_dir(recipe.model)))
    print(json.dumps(train(recipe), indent=2))
    return 0
