"""Write a synthetic task as the toolkit's native JSONL plus PNG files, with seeded splits.

Layout of OUT:
    train.jsonl, validation.jsonl, test.jsonl      SFT records (native format)
    dpo_train.jsonl, dpo_validation.jsonl          preference pairs (native DPO format): a clean
                                                   chosen trace, a wrong / looping / language-mixed
                                                   rejected one
    images/<split>/<n>.png
    manifest.json                                  task, seed, sizes, counts
    README.md                                      a dataset card marking the folder synthetic
    tools.py                                       a tool task's tools (`qvq-tune eval --tools`)
No scene (shape, colour, cells) appears in two splits, so test images are held out.
With `defect_rate` > 0 that share of the training traces carries a defect a distilled
QVQ trace might (a loop, or Chinese mixed into the English trace) with the right final
answer, so a model tuned on them reproduces it; DPO on clean-vs-defective pairs then
has something to remove (the demo shows it).
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
from .card import write_synthetic_card
from .scenes import draw, random_scene
from .tasks import DEFECTS, TASKS, Worked, language_mixed, looping

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
    defect_rate: float = 0.0                 # share of training traces made defective (same answer)
    dpo_kinds: tuple[str, ...] = DPO_KINDS   # which rejections the preference pairs use, in turn

    def __post_init__(self):
        if self.task not in TASKS:
            raise UserError(f"unknown synthetic task {self.task!r}; choose from {', '.join(TASKS)}",
                            key="task")
        for split in SPLITS:
            if getattr(self, split) < 0:
                raise UserError(f"{split} size must be >= 0", key=split)
        if not 0 <= self.defect_rate <= 1:
            raise UserError("defect_rate must be in [0, 1]", key="defect_rate")
        unknown = set(self.dpo_kinds) - set(DPO_KINDS)
        if unknown or not self.dpo_kinds:
            raise UserError(f"dpo_kinds must be some of {', '.join(DPO_KINDS)}", key="dpo_kinds")


def _record(task, split: str, i: int, rel_image: str, worked: Worked, scene) -> dict:
    rec = {"id": f"{task.name}-{split}-{i:06d}", "images": [rel_image], "question": worked.question,
           "reasoning": worked.reasoning, "answer": worked.answer, "task": task.name,
           "meta": {"shape": scene.shape, "colour": scene.colour, "count": scene.count}}
    if task.tools:         # native tool steps (readers/native.py)
        rec["tools"] = list(task.tools)
        rec["steps"] = [{"reasoning": s.reasoning, "tool_calls": [{"name": n, "arguments": a} for n, a in s.calls],
                         "results": list(s.results)} for s in worked.tool_steps]
    return rec


def _defective(worked: Worked, rng: random.Random, kind: str) -> str:
    return looping(worked, rng) if kind == "looping" else language_mixed(worked)


def _dpo_record(task, rec: dict, scene, worked: Worked, rng: random.Random, kind: str) -> dict:
    if kind == "wrong":
        bad = task.solve(task.wrong_value(scene, rng))
        rejected = {"reasoning": bad.reasoning, "answer": bad.answer}
    else:
        rejected = {"reasoning": _defective(worked, rng, kind), "answer": worked.answer}
    return {"id": rec["id"] + "-dpo", "images": rec["images"], "question": rec["question"],
            "chosen": {"reasoning": worked.reasoning, "answer": worked.answer},
            "rejected": rejected, "rejected_kind": kind, "task": rec["task"]}


def generate(cfg: SynthConfig, out: str | os.PathLike, *, progress: bool = True) -> dict:
    task = TASKS[cfg.task]
    out = Path(out)
    counts = {}
    with atomic_dir(out) as tmp:
        seen: set = set()
        for split_no, split in enumerate(SPLITS):
            rng = random.Random(f"{cfg.seed}:{cfg.task}:{split}")
            defect_rng = random.Random(f"{cfg.seed}:{cfg.task}:{split}:defects")
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
                rec = _record(task, split, i, rel, worked, scene)
                if split == "train" and cfg.defect_rate and not task.tools and defect_rng.random() < cfg.defect_rate:
                    kind = DEFECTS[defect_rng.randrange(len(DEFECTS))]
                    rec["reasoning"], rec["meta"]["defect"] = _defective(worked, defect_rng, kind), kind
                records.append(rec)
                if cfg.dpo and not task.tools and split != "test":
                    kind = cfg.dpo_kinds[i % len(cfg.dpo_kinds)]
                    pairs.append(_dpo_record(task, rec, scene, worked, rng, kind))
            _write_jsonl(tmp / f"{split}.jsonl", records)
            counts[split] = len(records)
            if cfg.dpo and not task.tools and split != "test":
                _write_jsonl(tmp / f"dpo_{split}.jsonl", pairs)
                counts[f"dpo_{split}"] = len(pairs)
        manifest = {"task": cfg.task, "description": task.description, "seed": cfg.seed,
                    "image_size": cfg.image_size, "counts": counts, "format": "native",
                    "defect_rate": cfg.defect_rate, "dpo_kinds": list(cfg.dpo_kinds)}
        if task.tools_file:
            (tmp / "tools.py").write_text(task.tools_file(), encoding="utf-8")
            manifest["tools"] = "tools.py"
        write_json_atomic(tmp / "manifest.json", manifest)
        write_synthetic_card(tmp, f"qvq-tune synthetic task {cfg.task}",
                             f"{task.description} (`qvq-tune synth --task {cfg.task} --seed {cfg.seed}`).")
    return manifest


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
