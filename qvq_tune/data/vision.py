"""Vision arithmetic and pixel loading shared by the builder and the collators.

`image_grid` asks the model's own image processor how an image of a given size is
resized and patched (its `smart_resize` and `get_number_of_image_patches`), so the
builder can count vision tokens from an image header without decoding pixels.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from PIL import Image, ImageOps

from ..models.loading import pixel_limits


def image_grid(image_processor, height: int, width: int) -> tuple[tuple[int, int, int], int]:
    """(grid_thw, number of vision tokens) for an image of height x width."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    patch, merge = image_processor.patch_size, image_processor.merge_size
    lo, hi = pixel_limits(image_processor)
    h, w = smart_resize(height, width, factor=patch * merge, min_pixels=lo, max_pixels=hi)
    grid = (1, h // patch, w // patch)
    n_patches = image_processor.get_number_of_image_patches(height, width, {})
    assert n_patches == grid[1] * grid[2], "image processor and smart_resize disagree"
    return grid, n_patches // (merge * merge)


def open_rgb(path_or_image: Any) -> Image.Image:
    if isinstance(path_or_image, Image.Image):
        img = path_or_image
    else:
        img = Image.open(path_or_image)
        img = ImageOps.exif_transpose(img)
    return img.convert("RGB") if img.mode != "RGB" else img


class PixelCache:
    """Preprocessed pixels per image path, bounded in bytes (least recently used out)."""

    def __init__(self, image_processor, max_bytes: int = 1 << 30):
        self.image_processor = image_processor
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def get(self, images: list) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values and image_grid_thw for a list of paths or PIL images, in order."""
        out_px, out_grid, todo = [None] * len(images), [None] * len(images), []
        for i, img in enumerate(images):
            key = img if isinstance(img, str) else None
            if key is not None and key in self._items:
                self._items.move_to_end(key)
                out_px[i], out_grid[i] = self._items[key]
                self.hits += 1
            else:
                todo.append(i)
        if todo:
            self.misses += len(todo)
            enc = self.image_processor(images=[open_rgb(images[i]) for i in todo], return_tensors="pt")
            grids = enc["image_grid_thw"]
            sizes = grids.prod(-1).tolist()
            for i, px, grid in zip(todo, torch.split(enc["pixel_values"], sizes), grids):
                out_px[i], out_grid[i] = px, grid
                if isinstance(images[i], str):
                    self._put(images[i], px, grid)
        return torch.cat(out_px), torch.stack(out_grid)

    def _put(self, key: str, px: torch.Tensor, grid: torch.Tensor) -> None:
        nbytes = px.numel() * px.element_size()
        if nbytes > self.max_bytes:
            return
        self._items[key] = (px, grid)
        self._bytes += nbytes
        while self._bytes > self.max_bytes:
            _, (old, _) = self._items.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()
