"""The run folder (`runs/NAME/`): everything later stages read instead of re-deriving.

    recipe.yaml              the resolved recipe (model is a checkpoint folder)
    base_model.json          detected identity of the base checkpoint (family, licence, path)
    chat_template.jinja      the exact chat template the samples were rendered with
    dataset.json             the dataset folders trained on, their build fingerprint, family,
                             reasoning format, and the processor / media settings of the build
    training_data.json       the summary of every dataset this run and the runs it starts from
                             trained and validated on, stage by stage (`data/training_data.py`)
    accelerate_config.yaml   the launcher preset as resolved for this run
    metrics.jsonl            one line per trainer log
    train.log                the workers' output (a single-node job)
    logs/node{R}.log         each node's output (a multi-node job; `logs/slurm-JOB.out` under Slurm)
    launch.sbatch            the Slurm script of a multi-node job (`train --prepare --slurm`)
    checkpoints/checkpoint-N resumable checkpoints; complete ones hold `qvq_tune_complete.json`
    adapter/                 the final LoRA adapter (PEFT format) or full weights
    train_report.json        summary: steps, losses, wall time, trainable parameters
    loss.png                 the loss curve (DPO: also reward margin and log-probs)

`RunFolder.create` is the one writer of the first four (the trainer calls it before any
worker starts); training, evaluation and export read them through the accessors here.

`training_data.json` lists the stages this run inherits, then its own: a run that starts
from another run's adapter (any recipe section's `start_adapter`: DPO from SFT, RL from
either) inherits that run's stages; otherwise the base model folder's own
`training_data.json` (the tiny base's pre-training, an exported model's chain), if any.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from .data import training_data as td
from .data.dataset import build_report, processor_settings
from .errors import UserError
from .models.detect import detect
from .paths import write_json_atomic, write_text_atomic
from .recipe import Recipe, key_lines, recipe_from_dict

RECIPE, BASE_MODEL, DATASET, TEMPLATE = "recipe.yaml", "base_model.json", "dataset.json", "chat_template.jinja"
ACCELERATE_CONFIG, METRICS, TRAIN_LOG, TRAIN_REPORT = ("accelerate_config.yaml", "metrics.jsonl",
                                                       "train.log", "train_report.json")
ADAPTER_DIR, CHECKPOINTS, PLOT = "adapter", "checkpoints", "loss.png"
TRAINING_DATA = td.FILE
MEDIA_SETTINGS = ("fps", "max_frames", "system")
LOCK = ".train.lock"
NODE_LOGS, SBATCH = "logs", "launch.sbatch"
COMPLETE_MARKER = "qvq_tune_complete.json"       # written into a checkpoint once every rank saved it


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER_DIR

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- the one writer --------------------------------------------------------------
    def create(self, recipe: Recipe, *, model_dir: str | Path, train_data: str | Path,
               eval_data: str | Path | None = None) -> None:
        """Write the resolved recipe, the base model's identity and the dataset record."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / RECIPE, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        write_json_atomic(self.path / BASE_MODEL, detect(model_dir).to_dict())
        write_json_atomic(self.path / DATASET, dataset_record(train_data, eval_data))
        write_json_atomic(self.path / TRAINING_DATA, training_data_record(
            recipe.to_dict(), model_dir, train_data, eval_data, name=self.path.name))
        template = chat_template(model_dir)
        if template is not None:
            write_text_atomic(self.path / TEMPLATE, template)

    # ---- readers ---------------------------------------------------------------------
    def read_json(self, name: str) -> dict:
        path = self.path / name
        if not path.is_file():
            raise UserError(f"no {name} in this run folder; is it a qvq-tune run (runs/NAME)?",
                            path=str(self.path))
        return json.loads(path.read_text(encoding="utf-8"))

    def recipe(self) -> Recipe:
        """The recipe this run was trained with, read back as the `Recipe` it was written from."""
        path = self.path / RECIPE
        if not path.is_file():
            raise UserError(f"no {RECIPE} in this run folder", path=str(self.path))
        text = path.read_text(encoding="utf-8")
        return recipe_from_dict(yaml.safe_load(text) or {}, where=str(path), lines=key_lines(text))

    def base_model(self) -> dict:
        return self.read_json(BASE_MODEL)

    def model_dir(self) -> Path:
        return Path(self.base_model()["path"])

    def dataset(self) -> dict:
        return self.read_json(DATASET)

    def processor_settings(self) -> dict:
        """`load_processor` keyword arguments the training data was built with."""
        return dict(self.dataset().get("processor", {}))

    def train_report(self) -> dict:
        return self.read_json(TRAIN_REPORT)

    def training_data(self) -> dict:
        """The run's training-data document; once trained, its own stage says its steps and samples."""
        doc = td.read(self.path)
        if self.finished() and doc["stages"]:
            report = self.train_report()
            doc["stages"][-1].update(steps=report.get("steps"), samples=report.get("samples"))
        return doc

    def finished(self) -> bool:
        return (self.path / TRAIN_REPORT).is_file()

    def checkpoints(self, *, complete: bool | None = None) -> list[Path]:
        """`checkpoints/checkpoint-N` folders by step; `complete=True`: only the finished saves."""
        folder = self.path / CHECKPOINTS
        found = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                       key=lambda p: int(p.name.split("-")[-1])) if folder.is_dir() else []
        if complete is None:
            return found
        return [p for p in found if (p / COMPLETE_MARKER).is_file() == complete]

    @contextmanager
    def lock(self):
        """Held by the process that trains this run (rank 0): a second training process on
        the same folder, e.g. a resume while a killed job's workers still run, is refused."""
        import fcntl
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError("another process is training in this run folder; wait for it to finish or "
                                "stop it (all of its processes) first", path=str(self.path)) from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def last_complete_checkpoint(self) -> Path | None:
        done = self.checkpoints(complete=True)
        return done[-1] if done else None

    def drop_checkpoints_after(self, last: Path | None) -> None:
        """Remove the saves past `last` (None: all): ones a kill interrupted, or past the last complete save."""
        import shutil
        step = int(last.name.split("-")[-1]) if last is not None else -1
        for stale in self.checkpoints():
            if int(stale.name.split("-")[-1]) > step:
                shutil.rmtree(stale)


def dataset_record(train_data: str | Path, eval_data: str | Path | None = None) -> dict:
    """Which dataset folders a run uses, with the train build's fingerprint and settings."""
    info: dict = {"train": str(Path(train_data).resolve()),
                  "eval": str(Path(eval_data).resolve()) if eval_data else None}
    report = build_report(train_data)
    if report is not None:
        settings, model = report.get("settings", {}), report.get("model", {})
        info.update(fingerprint=report.get("fingerprint"), kept=report.get("kept"),
                    family=model.get("family"), processor_hash=model.get("processor_hash"),
                    reasoning=settings.get("reasoning"),
                    processor=processor_settings(train_data),
                    media={k: settings.get(k) for k in MEDIA_SETTINGS})
    return info


def training_data_record(recipe: dict, model_dir: str | Path, train_data: str | Path,
                         eval_data: str | Path | None = None, *, name: str) -> dict:
    """The stages a run inherits (`inherited_stages`) and its own: objective, method, and the
    summary of each dataset it trains and validates on."""
    datasets = [td.dataset_summary(train_data, "train")]
    if eval_data:
        datasets.append(td.dataset_summary(eval_data, "validation"))
    inherited, starts_from = inherited_stages(recipe, model_dir)
    identity = detect(model_dir)
    own = {"name": recipe.get("name", name), "objective": recipe.get("objective"), "method": recipe.get("method"),
           "base_model": identity.checkpoint or Path(model_dir).name, "starts_from": starts_from,
           "fingerprint": td.stage_fingerprint(datasets), "datasets": datasets}
    return td.document(inherited + [own])


def start_adapter(recipe: dict) -> str | None:
    """The adapter a recipe starts from (any section's `start_adapter`), or None."""
    return next((section["start_adapter"] for section in recipe.values()
                 if isinstance(section, dict) and section.get("start_adapter")), None)


def inherited_stages(recipe: dict, model_dir: str | Path) -> tuple[list[dict], str]:
    """(the stages before this run, what it starts from): the start adapter's run's (or
    exported adapter's) stages, else the base model folder's; an adapter with no record
    is listed as a stage whose data is not recorded."""
    start = start_adapter(recipe)
    if start is None:
        return _stages_in(Path(model_dir)) or [], "the base model's weights"
    for folder in (Path(start), Path(start).parent):
        stages = _stages_in(folder)
        if stages:
            return stages, f"the adapter of stage {len(stages)} ({stages[-1].get('name')})"
    unknown = {"name": "an adapter without a record", "folder": Path(start).name, "objective": None, "method": None,
               "provenance": "not recorded: the start adapter has no training_data.json", "datasets": []}
    before = _stages_in(Path(model_dir)) or []
    return before + [unknown], f"the adapter of stage {len(before) + 1} (its data not recorded)"


def _stages_in(folder: Path) -> list[dict] | None:
    """The stages recorded in a run, export or model folder (without their numbers), or None."""
    if td.find(folder) is None:
        return None
    doc = RunFolder(folder).training_data() if (folder / RECIPE).is_file() else td.read(folder)
    return [{k: v for k, v in s.items() if k != "stage"} for s in doc["stages"]]


def chat_template(model_dir: str | Path) -> str | None:
    """The chat template a checkpoint folder ships (its own file, or inside the JSON configs)."""
    model_dir = Path(model_dir)
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.is_file():
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, str):
                return template
    return None
