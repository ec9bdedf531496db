"""The tiny base's pre-training data: short visual questions about one scene.

The base learns to name what it sees (colour, shape, count, and all three at once) and
nothing more; the diagram tasks in `tasks.py` then need domain knowledge it lacks.
"""

from __future__ import annotations

import random

from ..data.messages import Conversation, Media, Origin, Part, Turn
from .scenes import Scene, random_scene
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
