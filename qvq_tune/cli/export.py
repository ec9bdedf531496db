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
    from pathlib import Path

    import torch

    from ..data.dataset import load_samples
    from ..errors import UserError
    from ..export.merge import export_run
    from ..models.loading import load_processor
    from ..train.collators import VisionSFTCollator
    from ..train.config import load_recipe

    run = Path(args.run)
    if not (run / "adapter" / "adapter_config.json").is_file():
        raise UserError("no adapter/adapter_config.json in this run folder", path=str(run))
    recipe = load_recipe(run / "recipe.yaml")
    processor = load_processor(recipe.model)
    ds = load_samples(recipe.data.train)
    batch = VisionSFTCollator(processor)([ds[i] for i in range(min(4, len(ds)))])
    with torch.no_grad():
        report = export_run(recipe.model, str(run / "adapter"), args.out, batch, dtype=args.dtype)
    print(json.dumps(report, indent=2))
    return 0
