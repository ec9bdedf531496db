"""The tiny base's training-data record: its pre-training on synthetic captions, as a stage.

`record_pretraining(base)` writes the record once beside the cached base
(`tiny-qvq-base-HASH.training_data.json`, `data/training_data.beside`: the base folder
itself never changes once built, since runs in flight hash and read it), so every run on
the base, and every export of one, lists the pre-training first. The
caption set is seeded (`write_captions(..., f"{seed}:pretrain")`), so it is written again
exactly as the pre-training wrote it and built with the base's own processor and
template (the same files the pre-training built with), and summarised like any dataset
(a base built since keeps that summary in `pretrain/`, so nothing is rebuilt);
the stage's objective, method and steps come from the recipe and train report the base
keeps in `pretrain/`. The record is not part of the base's fingerprint, so a cached
base gains it without being rebuilt.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml

from ..data.build import BuildConfig, build
from ..data.training_data import beside, dataset_summary, document, find, stage_fingerprint
from ..paths import cache_dir, write_json_atomic
from ..run_folder import RECIPE, TRAIN_REPORT
from ..synth.captions import write_captions
from .pretrain import BASE_NAME, CAPTIONS_SUMMARY, REPORT_FILE, BaseRecipe


def record_pretraining(base: Path, *, log=print) -> Path:
    """The base's training-data record (written beside it when missing): its pre-training stage."""
    found = find(base)
    if found is not None:
        return found
    path = beside(base)
    recipe = BaseRecipe(**{k: v for k, v in json.loads((base / REPORT_FILE).read_text())["recipe"].items()
                           if k != "spec"})
    kept = base / "pretrain" / CAPTIONS_SUMMARY
    if kept.is_file():
        datasets = [json.loads(kept.read_text(encoding="utf-8"))]
    else:                                  # a base built before it kept the summary
        log(f"recording the tiny base's pre-training data (once) in {path}")
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".record-") as work:
            captions = write_captions(Path(work) / "captions", recipe.steps * recipe.batch_size,
                                      f"{recipe.seed}:pretrain")
            build(BuildConfig(input=str(captions), model=str(base), out=str(Path(work) / "pretrain-captions"),
                              reasoning="answer-only", reuse=False))
            datasets = [dataset_summary(Path(work) / "pretrain-captions", "train")]
    run_recipe = yaml.safe_load((base / "pretrain" / RECIPE).read_text(encoding="utf-8"))
    report = json.loads((base / "pretrain" / TRAIN_REPORT).read_text(encoding="utf-8"))
    stage = {"name": f"{BASE_NAME} pre-training", "objective": run_recipe.get("objective"),
             "method": run_recipe.get("method"), "base_model": "random weights (the tiny zoo's qwen2_vl)",
             "starts_from": "random weights", "fingerprint": stage_fingerprint(datasets), "datasets": datasets,
             "steps": report.get("steps"), "samples": report.get("samples")}
    write_json_atomic(path, document([stage]))
    return path
