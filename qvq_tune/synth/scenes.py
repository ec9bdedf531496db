"""Drawing the visual primitives: 1-4 copies of one shape in one colour on a 4x4 grid.

A 112x112 image is a 4x4 grid of 28-pixel cells, so with Qwen2-VL's 14-pixel patches and
2x2 merge each cell is exactly one vision token. Positions and sizes jitter a little.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .vocabulary import COLOURS, SHAPES

GRID = 4


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    cells: tuple[int, ...]      # grid cells 0..15 (row-major)
    jitter: tuple[tuple[int, int, int], ...]  # per object (dx, dy, dsize)

    @property
    def count(self) -> int:
        return len(self.cells)


def random_scene(rng: random.Random, *, max_count: int = 4) -> Scene:
    shape = rng.choice(SHAPES)
    colour = rng.choice(sorted(COLOURS))
    n = rng.randint(1, max_count)
    cells = tuple(sorted(rng.sample(range(GRID * GRID), n)))
    jitter = tuple((rng.randint(-3, 3), rng.randint(-3, 3), rng.randint(-2, 2)) for _ in cells)
    return Scene(shape, colour, cells, jitter)


def draw(scene: Scene | None, size: int = 112) -> Image.Image:
    """Render a scene (None: a blank image)."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    if scene is None:
        return img
    d = ImageDraw.Draw(img)
    cell = size / GRID
    fill = COLOURS[scene.colour]
    for c, (dx, dy, ds) in zip(scene.cells, scene.jitter):
        r, col = divmod(c, GRID)
        cx, cy = (col + 0.5) * cell + dx, (r + 0.5) * cell + dy
        h = cell * 0.34 + ds
        if scene.shape == "circle":
            d.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif scene.shape == "square":
            d.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        else:
            d.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=fill)
    return img


def blank(size: int = 112) -> Image.Image:
    return draw(None, size)
