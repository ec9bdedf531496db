"""The tiny base's pre-training data: short visual questions about one scene.

The base learns to name what it sees (colour, shape, count, and all three at once) and
nothing more; the diagram tasks in `tasks.py` then need domain knowledge it lacks.
`write_captions` writes such questions as native JSONL + PNG files, so the base is
built, trained and evaluated through the same data builder, trainer and evaluator as
users' runs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..data.messages import Conversation, Media, Origin, Part, Turn
from .card import write_synthetic_card
from .scenes import Scene, draw, random_scene
from .vocabulary import plural

QUESTIONS = {
    "colour": "What colour are the shapes?",
    "shape": "What shape are they?",
    "count": "How many shapes are there?",
    "describe": "Describe the image.",
}


def answer_for(kind: str, scene: Scene) -> str:
    if kind == "colour":
        return scene.colour
    if kind == "shape":
        return scene.shape
    if kind == "count":
        return str(scene.count)
    return f"{scene.count} {scene.colour} {plural(scene.shape, scene.count)}"


def caption_example(rng: random.Random, kind: str | None = None) -> tuple[Scene, str, Conversation]:
    """A random scene and one question about it, as a canonical conversation."""
    scene = random_scene(rng)
    kind = kind or rng.choice(sorted(QUESTIONS))
    conv = Conversation(
        turns=[Turn("user", [Part.of_media(Media("image", source="<scene>")), Part.of_text(QUESTIONS[kind])]),
               Turn("assistant", [Part.of_text(answer_for(kind, scene))])],
        origin=Origin("<synthetic captions>"), meta={"kind": kind})
    return scene, kind, conv


def write_captions(out: str | Path, n: int, seed: str, *, kinds: tuple[str, ...] | None = None,
                   image_size: int = 112) -> Path:
    """Write `n` caption questions (kind drawn at random, or `n` of each of `kinds`) as
    `OUT/captions.jsonl` with images in `OUT/images/` and a card marking them synthetic
    (`OUT/README.md`); ids are `KIND-NUMBER`."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    plan = [k for k in kinds for _ in range(n)] if kinds else [None] * n
    path = out / "captions.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i, wanted in enumerate(plan):
            scene, kind, conv = caption_example(rng, wanted)
            rel = f"images/{i:06d}.png"
            draw(scene, image_size).save(out / rel, optimize=False)
            fh.write(json.dumps({"id": f"{kind}-{i:06d}", "images": [rel], "question": QUESTIONS[kind],
                                 "answer": conv.turns[1].text}) + "\n")
    write_synthetic_card(out, "qvq-tune synthetic caption questions",
                         "Short questions about one drawn scene (colour, shape, count, all three), the tiny "
                         "base's pre-training data.")
    return path
