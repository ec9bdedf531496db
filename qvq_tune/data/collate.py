"""Samples -> batches: padding, pixels from the image cache, and the Qwen VL extras.

One collator serves training (right padding), generation (left padding) and the export
check, so all three see identical model inputs. A sample (from `data/render.py`) holds
token ids, labels and media references; the collator pads them, turns images into `pixel_values` through the model's image
processor (cached per path), checks each image's grid against the one recorded at
build time, and adds `mm_token_type_ids`, which Qwen VL's forward needs with images.

For the SFT trainer (`loss_weights=True`), a batch holding a sample with per-token
`loss_weights` (a reply whose loss weight is not 1, see `data/render.py`) also gets a
float `loss_weights` tensor, padded with 0, where samples without weights weigh 1 on their
labelled tokens; the trainer pops it (`train/weighted_sft.py`). A batch with no weighted
sample has no such key, so the model sees exactly what it saw before weights existed; the
other users (generation, the export check) never get it.
"""

from __future__ import annotations

import torch

from .media import load_video_frames
from .render import IGNORE_INDEX
from .vision import PixelCache


class VisionCollator:
    def __init__(self, processor, *, padding_side: str = "right", pad_to_multiple_of: int | None = None,
                 cache_bytes: int = 1 << 30, loss_weights: bool = False):
        self.processor = processor
        self.loss_weights = loss_weights
        self.pad_id = processor.tokenizer.pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pixels = PixelCache(processor.image_processor, cache_bytes)

    def _pad(self, seqs: list[list], value, dtype=torch.long) -> torch.Tensor:
        longest = max(len(s) for s in seqs)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        out = torch.full((len(seqs), longest), value, dtype=dtype)
        for i, s in enumerate(seqs):
            t = torch.as_tensor(s, dtype=dtype)
            if self.padding_side == "right":
                out[i, :len(s)] = t
            else:
                out[i, longest - len(s):] = t
        return out

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        ids = [s["input_ids"] for s in samples]
        batch = {
            "input_ids": self._pad(ids, self.pad_id),
            "attention_mask": self._pad([[1] * len(s) for s in ids], 0),
        }
        if "labels" in samples[0]:
            batch["labels"] = self._pad([s["labels"] for s in samples], IGNORE_INDEX)
            if self.loss_weights and any(s.get("loss_weights") is not None for s in samples):
                batch["loss_weights"] = self._pad([_weights(s) for s in samples], 0.0, torch.float32)
        images = [img for s in samples for img in (s.get("images") or [])]
        if images:
            pixel_values, grid = self.pixels.get(images)
            expected = [g for s in samples for g in (s.get("image_grid_thw") or [])]
            if expected and grid.tolist() != [list(g) for g in expected]:
                raise ValueError("image grids differ from the ones recorded when the dataset was "
                                 "built; rebuild it with this model's processor settings")
            batch["pixel_values"], batch["image_grid_thw"] = pixel_values, grid
        videos = [v for s in samples for v in (s.get("videos") or [])]
        if videos:
            enc = self.processor.video_processor(videos=[load_video_frames(v) for v in videos],
                                                 return_tensors="pt")
            batch["pixel_values_videos"], batch["video_grid_thw"] = enc["pixel_values_videos"], enc["video_grid_thw"]
        batch["mm_token_type_ids"] = torch.as_tensor(
            self.processor.create_mm_token_type_ids(batch["input_ids"].tolist()), dtype=torch.long)
        return batch


def _weights(sample: dict) -> list[float]:
    """A sample's per-token loss weights; without any, 1 on its labelled tokens."""
    if sample.get("loss_weights") is not None:
        return sample["loss_weights"]
    return [0.0 if x == IGNORE_INDEX else 1.0 for x in sample["labels"]]
