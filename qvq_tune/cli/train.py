"""`qvq-tune train`: launch SFT from a YAML recipe under accelerate (DDP / ZeRO-2 / ZeRO-3)."""

from __future__ import annotations

import json

HELP = "fine-tune (QLoRA / LoRA / full SFT) from a YAML recipe, launched with accelerate"


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP)
    p.add_argument("--recipe", required=True, help="YAML recipe (see recipes/)")
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
    from ..models.detect import detect
    from ..train.config import load_recipe, save_recipe
    from ..train.launch import launch, resolve_accelerate_config
    from ..models.resolve import resolve_model_dir

    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    resolve_accelerate_config(recipe.launch.accelerate_config)
    if recipe.model != "tiny":
        detect(recipe.model)
    if args.check:
        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    recipe.model = str(resolve_model_dir(recipe.model))  # build the tiny base once, before the workers start
    run_dir = recipe.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, run_dir / "recipe.yaml")
    launch("qvq_tune.train.sft", ["--recipe", str(run_dir / "recipe.yaml")],
           config=recipe.launch.accelerate_config, num_processes=recipe.launch.num_processes, run_dir=run_dir)
    print((run_dir / "train_report.json").read_text())
    return 0
