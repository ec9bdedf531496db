"""The run folder (`runs/NAME/`): everything later stages read instead of re-deriving.

    recipe.yaml              the resolved recipe (model is a checkpoint folder)
    base_model.json          detected identity of the base checkpoint (family, licence, path)
    dataset.json             the dataset folders trained on, their build fingerprint, and
                             the processor settings they were built with
    accelerate_config.yaml   the launcher preset as resolved for this run
    metrics.jsonl            one line per trainer log
    train.log                the workers' output
    adapter/                 the final LoRA adapter (PEFT format) or full weights
    train_report.json        summary: steps, losses, wall time, trainable parameters

`RunFolder.create` is the one writer of the first three (the trainer calls it before any
worker starts); training, evaluation and export read them through the accessors here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from .data.dataset import build_report
from .errors import UserError
from .models.detect import detect
from .paths import write_json_atomic, write_text_atomic

RECIPE, BASE_MODEL, DATASET = "recipe.yaml", "base_model.json", "dataset.json"
ACCELERATE_CONFIG, METRICS, TRAIN_LOG, TRAIN_REPORT = ("accelerate_config.yaml", "metrics.jsonl",
                                                       "train.log", "train_report.json")
ADAPTER_DIR = "adapter"
# Build settings that change what the processor produces: the processor must be loaded
# with them wherever the dataset's samples are turned into pixels.
PROCESSOR_SETTINGS = ("min_pixels", "max_pixels")


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
    def create(self, recipe: dict, *, model_dir: str | Path, train_data: str | Path,
               eval_data: str | Path | None = None) -> None:
        """Write the resolved recipe, the base model's identity and the dataset record."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / RECIPE, yaml.safe_dump(recipe, sort_keys=False))
        write_json_atomic(self.path / BASE_MODEL, detect(model_dir).to_dict())
        write_json_atomic(self.path / DATASET, dataset_record(train_data, eval_data))

    # ---- readers ---------------------------------------------------------------------
    def read_json(self, name: str) -> dict:
        path = self.path / name
        if not path.is_file():
            raise UserError(f"no {name} in this run folder; is it a qvq-tune run (runs/NAME)?",
                            path=str(self.path))
        return json.loads(path.read_text(encoding="utf-8"))

    def recipe(self) -> dict:
        path = self.path / RECIPE
        if not path.is_file():
            raise UserError(f"no {RECIPE} in this run folder", path=str(self.path))
        return yaml.safe_load(path.read_text(encoding="utf-8"))

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


def dataset_record(train_data: str | Path, eval_data: str | Path | None = None) -> dict:
    """Which dataset folders a run uses, with the train build's fingerprint and settings."""
    info: dict = {"train": str(Path(train_data).resolve()),
                  "eval": str(Path(eval_data).resolve()) if eval_data else None}
    report = build_report(train_data)
    if report is not None:
        settings = report.get("settings", {})
        info.update(fingerprint=report.get("fingerprint"), kept=report.get("kept"),
                    family=report.get("model", {}).get("family"),
                    reasoning=settings.get("reasoning"),
                    processor={k: settings[k] for k in PROCESSOR_SETTINGS if settings.get(k) is not None})
    return info
