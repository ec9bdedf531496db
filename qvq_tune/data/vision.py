"""Vision arithmetic and pixel loading shared by the builder and the collators.

`image_grid` asks the model's own image processor how an image of a given size is
resized and patched (its `smart_resize` and `get_number_of_image_patches`), so the
builder can count vision tokens from an image header without decoding pixels.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from pathlib import Path
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
    """Preprocessed pixels and grids per image *content* (sha256 of the file), so an image is
    decoded and resized once however many paths or epochs show it.

    In memory: least recently used out past `max_bytes` (0: no memory cache; the trainer
    sizes it by what it saves: nothing when no image comes back within the run). On disk
    (`directory`, optional): one file per content hash and processor settings, kept
    across runs. `stats()` reports hits, misses and bytes held.
    """

    def __init__(self, image_processor, max_bytes: int = 1 << 30, directory: str | Path | None = None):
        self.image_processor = image_processor
        self.max_bytes = max_bytes
        self.directory = Path(directory) if directory else None
        self._items: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.disk_hits = 0

    def get(self, images: list) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values and image_grid_thw for a list of paths or PIL images, in order."""
        out_px, out_grid, todo = [None] * len(images), [None] * len(images), []
        keys, decoded = [None] * len(images), {}
        for i, img in enumerate(images):
            if isinstance(img, str):
                data = Path(img).read_bytes()
                keys[i] = hashlib.sha256(data).hexdigest()
                hit = self._lookup(keys[i])
                if hit is not None:
                    out_px[i], out_grid[i] = hit
                    continue
                decoded[i] = open_rgb(io.BytesIO(data))
            else:
                decoded[i] = open_rgb(img)
            todo.append(i)
        if todo:
            self.misses += len(todo)
            enc = self.image_processor(images=[decoded[i] for i in todo], return_tensors="pt")
            grids = enc["image_grid_thw"]
            sizes = grids.prod(-1).tolist()
            for i, px, grid in zip(todo, torch.split(enc["pixel_values"], sizes), grids):
                out_px[i], out_grid[i] = px, grid
                if keys[i] is not None:
                    self._store(keys[i], px, grid)
        return torch.cat(out_px), torch.stack(out_grid)

    def stats(self) -> dict:
        return {"hits": self.hits, "disk_hits": self.disk_hits, "misses": self.misses,
                "items": len(self._items), "mib": round(self._bytes / 2 ** 20, 1),
                "max_mib": round(self.max_bytes / 2 ** 20, 1), "directory": str(self.directory) if self.directory else None}

    def _lookup(self, key: str):
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        path = self._disk_path(key)
        if path is not None and path.is_file():
            px, grid = torch.load(path)
            self.disk_hits += 1
            self._remember(key, px, grid)
            return px, grid
        return None

    def _disk_path(self, key: str) -> Path | None:
        return self.directory / f"{key}.pt" if self.directory else None

    def _store(self, key: str, px: torch.Tensor, grid: torch.Tensor) -> None:
        path = self._disk_path(key)
        if path is not None and not path.is_file():
            from ..paths import atomic_file
            with atomic_file(path) as tmp:
                torch.save((px.contiguous(), grid), tmp)
        self._remember(key, px, grid)

    def _remember(self, key: str, px: torch.Tensor, grid: torch.Tensor) -> None:
        nbytes = px.numel() * px.element_size()
        if nbytes > self.max_bytes:
            return
        self._items[key] = (px, grid)
        self._bytes += nbytes
        while self._bytes > self.max_bytes:
            _, (old, _) = self._items.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()
