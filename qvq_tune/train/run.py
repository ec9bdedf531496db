"""`train(recipe)`: the one training flow the CLI, the demo and the tiny base all call.

1. Check everything that can fail before a model loads (launcher preset, base folder,
   dataset: present, of the kind the objective reads, built for this family and this
   tokenizer, data.eval built with data.train's processor settings; start adapter; the
   objective's own checks; logger), each failure one line naming the recipe key. The CLI
   runs the same checks (`model_built=False`) before it builds the tiny base a recipe names.
2. Guard the run folder: a finished run is never overwritten, an unfinished one is
   resumed (`resume=True`, from its last complete checkpoint, with the same recipe) or
   replaced (`overwrite=True`), never silently mixed.
3. Write the run folder once (`RunFolder.create`), then run the recipe's objective (its
   record: `train/objectives.py`): under `accelerate launch`, one worker process per rank
   (`python -m qvq_tune.train.worker`), or, with `in_process=True`, here (single process
   only). Returns `train_report.json`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

from ..data.build import processor_hash
from ..data.dataset import PROCESSOR_SETTINGS, build_report, find_samples, kinds_in, processor_settings
from ..data.kinds import DataKind
from ..errors import UserError
from ..models.detect import detect
from ..recipe import SECTION_OF, Recipe
from ..run_folder import LOCK, RunFolder
from .launch import launch, resolve_accelerate_config
from .objectives import get, run_objective, section_start_adapter

WORKER_MODULE = "qvq_tune.train.worker"


def check(recipe: Recipe, source: str | None = None, *, model_built: bool = True) -> None:
    """Everything that can fail before a model loads; `source` names the recipe file in errors.
    `model_built=False` (the tiny base, built on first use): datasets are checked for
    presence and kind, not yet against the model."""
    def fail(key: str, message: str):
        raise UserError(message, path=source, key=key)

    try:
        resolve_accelerate_config(recipe.launch.accelerate_config)
    except UserError as exc:
        fail("launch.accelerate_config", exc.bare_message)
    family = None
    if model_built:
        try:
            family = detect(recipe.model).family
        except UserError as exc:
            fail("model", str(exc))
    objective = get(recipe.objective)
    for key, path in (("data.train", recipe.data.train), ("data.eval", recipe.data.eval)):
        if path:
            problem = dataset_problem(Path(path), objective.name, objective.reads, family, Path(recipe.model))
            if problem:
                fail(key, f"{path}: {problem}")
    if recipe.data.eval:
        problem = processor_mismatch(Path(recipe.data.train), Path(recipe.data.eval))
        if problem:
            fail("data.eval", problem)
    adapter = section_start_adapter(recipe)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        fail(f"{objective.section}.start_adapter",
             f"{recipe.section().start_adapter}: no adapter_config.json (give an adapter folder or a run folder)")
    for key, problem in objective.checks(recipe, family):
        fail(key, problem)
    if recipe.kernels.liger and family is not None:
        from ..models.registry import get_family
        from .kernels import liger_problem
        problem = liger_problem(get_family(family))
        if problem:
            fail("kernels.liger", problem)
    if recipe.report_to != "none" and importlib.util.find_spec(recipe.report_to) is None:
        fail("report_to", f"{recipe.report_to} is not installed (pip install {recipe.report_to}), or use none")


def dataset_problem(path: Path, objective: str, kind: DataKind, family: str | None,
                    model_dir: Path) -> str | None:
    """Why a dataset folder cannot train this model with this objective (which reads `kind`),
    or None (`family=None`: the model is not known yet; only presence and kind are checked)."""
    if not path.exists():
        return "the dataset folder does not exist; build it with `qvq-tune data build`"
    if find_samples(path, kind) is None:
        held = kinds_in(path)
        if held:
            readers = [name for name in SECTION_OF if get(name).reads in held]
            return (f"objective {objective} needs {kind.what}, but this build holds "
                    f"{' and '.join(k.what for k in held)} only"
                    + (f"; use objective: {' or '.join(readers)}" if readers else ""))
        return "not a built dataset; build it with `qvq-tune data build`"
    report = build_report(path)
    if family is None:
        return None
    if report is None:
        return "no report.json beside the samples, so the model it was built for is unknown; rebuild it"
    built_for = report.get("model", {})
    if built_for.get("family") != family:
        return (f"built for the {built_for.get('family')} family, but the model is {family}; rebuild it with "
                "this model (`data build --model`)")
    if built_for.get("processor_hash") != processor_hash(model_dir):
        return (f"built with another tokenizer / processor / chat template ({built_for.get('path')}); token ids "
                "would not match this model, rebuild it with `data build --model` this model")
    return None


def processor_mismatch(train: Path, eval_: Path) -> str | None:
    """Why `eval_` cannot be scored by the processor the trainer loads for `train` (one
    processor, with the train build's settings, turns both into pixels), or None."""
    trained, evaluated = processor_settings(train), processor_settings(eval_)
    differ = [name for name in PROCESSOR_SETTINGS if trained.get(name) != evaluated.get(name)]
    if not differ:
        return None

    def said(settings: dict) -> str:
        return ", ".join(f"{n}={settings[n]}" if n in settings else f"{n} unset (the processor's default)"
                         for n in differ)
    return (f"{eval_} was built with {said(evaluated)}, but data.train {train} with {said(trained)}; the "
            "trainer loads one processor for both, so rebuild data.eval with the train build's settings")


def prepare_run_folder(run: RunFolder, recipe: Recipe, *, resume: bool, overwrite: bool) -> str | None:
    """Guard the run folder; returns the checkpoint to resume from (or None)."""
    if overwrite and run.path.exists():
        for entry in run.path.iterdir():
            if entry.name != LOCK:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    elif resume:
        if run.finished():
            raise UserError("this run already finished (train_report.json); nothing to resume", path=str(run.path))
        last = run.last_complete_checkpoint()
        if last is None:
            raise UserError("nothing to resume: no complete checkpoint in checkpoints/ "
                            "(set optim.save_steps to write them)", path=str(run.path))
        differs = _first_difference(run.recipe().to_dict(), recipe.to_dict())
        if differs:
            raise UserError(f"the recipe differs from the one this run started with ({differs}); resume with "
                            "the same recipe", path=str(run.path), key=differs)
        run.drop_checkpoints_after(last)
        return str(last)
    elif run.finished():
        raise UserError("this run folder holds a finished run; pass --overwrite to replace it, or choose "
                        "another name", path=str(run.path))
    elif run.checkpoints():
        raise UserError("this run folder holds checkpoints of an unfinished run; pass --resume to continue it "
                        "or --overwrite to start over", path=str(run.path))
    run.create(recipe, model_dir=recipe.model, train_data=recipe.data.train,
               eval_data=recipe.data.eval)
    return None


def _first_difference(saved: dict, current: dict, prefix: str = "") -> str | None:
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return prefix + key
    return None


def prepare(recipe: Recipe, *, resume: bool = False, overwrite: bool = False,
            source: str | None = None) -> tuple[Recipe, RunFolder, str | None]:
    """Check the recipe and guard and write the run folder; (recipe, run, checkpoint to resume)."""
    recipe = dataclasses.replace(recipe, model=str(Path(recipe.model).absolute()))
    check(recipe, source)
    run = RunFolder(recipe.run_dir)
    with run.lock():                  # nobody is training here now (released before the workers take it)
        resume_from = prepare_run_folder(run, recipe, resume=resume, overwrite=overwrite)
    return recipe, run, resume_from


def worker_args(run: RunFolder, resume_from: str | None) -> list[str]:
    return ["--run", str(run.path)] + (["--resume-from", resume_from] if resume_from else [])


def train(recipe: Recipe, *, in_process: bool = False, resume: bool = False, overwrite: bool = False,
          source: str | None = None) -> dict:
    """Check, guard and write the run folder, then train; `recipe.model` must be a checkpoint folder."""
    if in_process and recipe.launch.num_processes != 1:
        raise UserError("in-process training runs one process; set launch.num_processes: 1",
                        path=source, key="launch.num_processes")
    recipe, run, resume_from = prepare(recipe, resume=resume, overwrite=overwrite, source=source)
    if in_process:
        with run.lock():
            return run_objective(recipe, run, resume_from)
    launch(WORKER_MODULE, worker_args(run, resume_from), config=recipe.launch.accelerate_config,
           num_processes=recipe.launch.num_processes, run_dir=run.path)
    return run.train_report()

