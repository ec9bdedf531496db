"""The run folder (`runs/NAME/`): everything later stages read instead of re-deriving.

    recipe.yaml        the resolved recipe
    base_model.json    detected identity of the base checkpoint (family, licence, path)
    dataset.json       which dataset folder was trained on, and its fingerprint
    metrics.jsonl      one line per trainer log
    adapter/           the final LoRA adapter (PEFT format) or full weights
    train_report.json  summary: steps, losses, wall time, trainable parameters
"""

from __future__ import annotations

import json
from pathlib import Path

from ..models.detect import detect
from ..paths import write_json_atomic
from .config import Recipe, save_recipe

ADAPTER_DIR = "adapter"


def init_run_folder(recipe: Recipe, model_dir: str) -> Path:
    run = recipe.run_dir
    run.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, run / "recipe.yaml")
    write_json_atomic(run / "base_model.json", detect(model_dir).to_dict())
    dataset_report = Path(recipe.data.train).parent / "report.json"
    info = {"train": str(Path(recipe.data.train).resolve()), "eval": recipe.data.eval}
    if dataset_report.is_file():
        rep = json.loads(dataset_report.read_text())
        info["fingerprint"] = rep.get("fingerprint")
        info["kept"] = rep.get("kept")
    write_json_atomic(run / "dataset.json", info)
    return run


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
