"""`train(recipe)`: the one training flow the CLI, the demo and the tiny base all call.

Validate what can be checked without a model (launcher preset, base folder, dataset),
write the run folder once (`RunFolder.create`), then run the recipe's objective: under
`accelerate launch`, one worker process per rank (`python -m qvq_tune.train.worker`),
or, with `in_process=True`, here in this process (single process only). Returns the
run's `train_report.json`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data.dataset import load_samples
from ..errors import UserError
from ..models.detect import detect
from ..run_folder import RunFolder
from .config import Recipe
from .launch import launch, resolve_accelerate_config

WORKER_MODULE = "qvq_tune.train.worker"


def objectives() -> dict:
    """objective name -> worker function (recipe, run folder) -> report."""
    from .sft import run_sft
    return {"sft": run_sft}


def check(recipe: Recipe) -> None:
    """Everything that can fail before a model loads: preset, base folder, dataset."""
    resolve_accelerate_config(recipe.launch.accelerate_config)
    detect(recipe.model)
    load_samples(recipe.data.train)


def train(recipe: Recipe, *, in_process: bool = False) -> dict:
    """Write the run folder, then train; `recipe.model` must be a checkpoint folder."""
    if in_process and recipe.launch.num_processes != 1:
        raise UserError("in-process training runs one process; set launch.num_processes: 1",
                        key="launch.num_processes")
    recipe = dataclasses.replace(recipe, model=str(Path(recipe.model).absolute()))
    check(recipe)
    run = RunFolder(recipe.run_dir)
    run.create(recipe.to_dict(), model_dir=recipe.model, train_data=recipe.data.train,
               eval_data=recipe.data.eval)
    if in_process:
        return objectives()[recipe.objective](recipe, run)
    launch(WORKER_MODULE, ["--run", str(run.path)], config=recipe.launch.accelerate_config,
           num_processes=recipe.launch.num_processes, run_dir=run.path)
    return run.train_report()
