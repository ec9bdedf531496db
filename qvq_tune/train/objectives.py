"""Training objectives as records, and the one set-up path they share.

An objective is one `Objective` record, `OBJECTIVE` in its module `train/<name>.py`:
its recipe section (`config.SECTION_OF`), the kind of built data it reads
(`data/kinds.py`), how it builds its TRL trainer (with its collator) from the shared
set-up, what it checks before launch, and the metrics it adds to `train_report.json`
and the plot. Everything else is shared and lives here or below: the launcher, resume
and the run folder (`run.py`), the model (`model_setup.py`), the trainer arguments and
callbacks (`trainer_args.py`), the report (`report.py`).

`run_objective` is the flow every rank runs (or the caller, in-process):
run folder -> base model folder -> processor (with the dataset's settings) -> the data
the objective reads -> model (+ LoRA, seeded; from the section's `start_adapter` when it
has one) -> the objective's trainer -> train (or resume) -> adapter and report.

A new objective touches three files: `train/<name>.py` (this record and its trainer),
`recipe.py` (its section dataclass and its `SECTION_OF` line) and its recipe.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..data.kinds import DataKind
from ..run_folder import ADAPTER_DIR, RunFolder
from ..recipe import SECTION_OF, Recipe


@dataclass
class Setup:
    """What the shared flow hands an objective's `trainer` builder."""
    recipe: Recipe
    run: RunFolder
    family: Any                        # models.registry.ModelFamily
    processor: Any
    model: Any
    train: Any                         # datasets.Dataset of the objective's data kind
    eval: Any                          # the same for data.eval, or None
    rss_before_model_mib: float = 0.0  # the runtime's own footprint (planner baseline)

    @property
    def section(self):
        return self.recipe.section()


@dataclass(frozen=True)
class Objective:
    name: str
    reads: DataKind                    # the built data kind it trains on
    # Setup -> (a TRL trainer with its collator and optimizer, extra callbacks)
    trainer: Callable[[Setup], tuple[Any, tuple]]
    # (recipe, family or None) -> [(recipe key, problem)]: what can fail before launch, beyond
    # the shared checks (dataset kind / family / tokenizer, start adapter, launcher)
    checks: Callable[[Recipe, Any], list[tuple[str, str]]] = lambda recipe, family: []
    report_keys: tuple[str, ...] = ()  # logged metrics kept as <key>_first / <key>_last in the report
    plot_keys: tuple[str, ...] = ()    # logged metrics drawn beside the loss
    doc: str = ""                      # one line for help and docs

    @property
    def section(self) -> str:
        return SECTION_OF[self.name]


def get(name: str) -> Objective:
    """The record of objective `name` (`train/<name>.py`'s `OBJECTIVE`)."""
    if name not in SECTION_OF:
        raise KeyError(f"unknown objective {name!r} (known: {', '.join(SECTION_OF)})")
    record = importlib.import_module(f"{__package__}.{name}").OBJECTIVE
    if record.name != name:
        raise AssertionError(f"train/{name}.py registers objective {record.name!r}")
    return record


def registered() -> dict[str, Objective]:
    return {name: get(name) for name in SECTION_OF}


def start_adapter(path: str | None) -> str | None:
    """An adapter folder, or a run folder's adapter/."""
    if path is None:
        return None
    folder = Path(path)
    return str(folder / ADAPTER_DIR if (folder / ADAPTER_DIR / "adapter_config.json").is_file() else folder)


def section_start_adapter(recipe: Recipe) -> str | None:
    """The objective section's `start_adapter` (an SFT adapter or run folder), when it has one."""
    return start_adapter(getattr(recipe.section(), "start_adapter", None))


def setup(recipe: Recipe, run: RunFolder) -> Setup:
    """The shared set-up: processor (with the dataset's settings), the data the objective
    reads, the model (+ LoRA, seeded; from the section's `start_adapter` when set)."""
    from ..data.dataset import load_samples
    from ..models.detect import detect
    from ..models.loading import load_processor
    from ..models.registry import get_family
    from .callbacks import peak_memory_mib
    from .mixed_batches import keep_vision_tower_in_step
    from .model_setup import build_model

    objective = get(recipe.objective)
    family = get_family(detect(recipe.model).family)
    processor = load_processor(recipe.model, **run.processor_settings())
    train_ds = load_samples(recipe.data.train, objective.reads)
    eval_ds = load_samples(recipe.data.eval, objective.reads) if recipe.data.eval else None
    before_model = peak_memory_mib()["peak_rss_mib"]
    model = build_model(recipe, family, recipe.model, adapter=section_start_adapter(recipe))
    keep_vision_tower_in_step(model, family)
    return Setup(recipe, run, family, processor, model, train_ds, eval_ds, before_model)


def run_objective(recipe: Recipe, run: RunFolder, resume_from: str | None = None) -> dict:
    """Train `recipe.objective` in this process (one rank of a launch); returns the report on rank 0."""
    from .model_setup import keep_trainable_dtype
    from .report import finish
    from .trainer_args import attach

    objective = get(recipe.objective)
    started = time.time()
    shared = setup(recipe, run)
    trainer, callbacks = objective.trainer(shared)
    keep_trainable_dtype(trainer.model, recipe.dtype)
    attach(trainer, run, recipe, shared.family, *callbacks)
    result = trainer.train(resume_from_checkpoint=resume_from)
    return finish(trainer, result, recipe, run, shared.processor, objective, samples=len(shared.train),
                  started=started, resumed_from=resume_from, rss_before_model_mib=shared.rss_before_model_mib)
