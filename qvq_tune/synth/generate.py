"""Write a synthetic task as the toolkit's native JSONL plus PNG files, with seeded splits.

Layout of OUT:
    train.jsonl, validation.jsonl, test.jsonl      SFT records (native format)
    dpo_train.jsonl, dpo_validation.jsonl          preference pairs (native DPO format)
    images/<split>/<n>.png
    manifest.json                                  task, seed, sizes, counts
No scene (shape, colour, cells) appears in two splits, so test images are held out.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..paths import atomic_dir, write_json_atomic
from .scenes import draw, random_scene
from .tasks import TASKS, Worked, language_mixed, looping

SPLITS = ("train", "validation", "test")
DPO_KINDS = ("wrong", "looping", "language_mixed")


@dataclass
class SynthConfig:
    task: str = "parts_cost"
    train: int = 2000
    validation: int = 100
    test: int = 300
    dpo: bool = True
    seed: int = 0
    image_size: int = 112

    def __post_init__(self):
        if self.task not in TASKS:
            raise UserError(f"unknown synthetic task {self.task!r}; choose from {', '.join(TASKS)}",
                            key="task")
        for split in SPLITS:
            if getattr(self, split) < 0:
                raise UserError(f"{split} size must be >= 0", key=split)


def _record(task_name: str, split: str, i: int, rel_image: str, worked: Worked, scene) -> dict:
    return {"id": f"{task_name}-{split}-{i:06d}", "images": [rel_image], "question": worked.question,
            "reasoning": worked.reasoning, "answer": worked.answer, "task": task_name,
            "meta": {"shape": scene.shape, "colour": scene.colour, "count": scene.count}}


def _dpo_record(task, rec: dict, scene, worked: Worked, rng: random.Random, kind: str) -> dict:
    if kind == "wrong":
        bad = task.solve(task.wrong_value(scene, rng))
        rejected = {"reasoning": bad.reasoning, "answer": bad.answer}
    elif kind == "looping":
        rejected = {"reasoning": looping(worked, rng), "answer": worked.answer}
    else:
        rejected = {"reasoning": language_mixed(worked), "answer": worked.answer}
    return {"id": rec["id"] + "-dpo", "images": rec["images"], "question": rec["question"],
            "chosen": {"reasoning": rec["reasoning"], "answer": rec["answer"]},
            "rejected": rejected, "rejected_kind": kind, "task": rec["task"]}


def generate(cfg: SynthConfig, out: str | os.PathLike, *, progress: bool = True) -> dict:
    task = TASKS[cfg.task]
    out = Path(out)
    counts = {}
    with atomic_dir(out) as tmp:
        seen: set = set()
        for split_no, split in enumerate(SPLITS):
            rng = random.Random(f"{cfg.seed}:{cfg.task}:{split}")
            (tmp / "images" / split).mkdir(parents=True, exist_ok=True)
            records, pairs = [], []
            bar = tqdm(range(getattr(cfg, split)), desc=f"synth {split}", disable=not progress,
                       leave=False)
            for i in bar:
                for _ in range(1000):
                    scene = random_scene(rng)
                    key = (scene.shape, scene.colour, scene.cells)
                    if key not in seen:
                        break
                seen.add(key)
                rel = f"images/{split}/{i:06d}.png"
                draw(scene, cfg.image_size).save(tmp / rel, optimize=False)
                worked = task.solve(scene)
                rec = _record(cfg.task, split, i, rel, worked, scene)
                records.append(rec)
                if cfg.dpo and split != "test":
                    pairs.append(_dpo_record(task, rec, scene, worked, rng, DPO_KINDS[i % len(DPO_KINDS)]))
            _write_jsonl(tmp / f"{split}.jsonl", records)
            counts[split] = len(records)
            if cfg.dpo and split != "test":
                _write_jsonl(tmp / f"dpo_{split}.jsonl", pairs)
                counts[f"dpo_{split}"] = len(pairs)
        manifest = {"task": cfg.task, "description": task.description, "seed": cfg.seed,
                    "image_size": cfg.image_size, "counts": counts, "format": "native"}
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
