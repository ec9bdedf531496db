"""Samples -> batches: padding, pixels from the image cache, and the Qwen VL extras.

One collator serves training (right padding), generation (left padding) and the export
check, so all three see identical model inputs. A sample (from `data/render.py`) holds
token ids, labels and media references; the collator pads them, turns images into `pixel_values` through the model's image
processor (cached per path), checks each image's grid against the one recorded at
build time, and adds `mm_token_type_ids`, which Qwen VL's forward needs with images, and
every other input the model's own processor gives for videos (`second_per_grid_ts` where
the processor names it: Qwen2.5-VL's time-aligned video positions).

For the SFT trainer (`loss_weights=True`), a batch holding a sample with per-token
`loss_weights` (a reply whose loss weight is not 1, see `data/render.py`), or collated with
span weights other than 1 (`span_weights`: the recipe's reasoning / answer weights, applied
by each token's `label_span`), also gets a float `loss_weights` tensor, padded with 0, where
samples without weights weigh 1 on their labelled tokens; the trainer pops it
(`train/weighted_sft.py`). A batch with no weighting has no such key, so the model sees
exactly what it saw before weights existed; the other users (generation, the export
check) never get it.
"""

from __future__ import annotations

import time

import torch

from .render import IGNORE_INDEX, SPAN_ANSWER, SPAN_NONE, SPAN_REASONING, SPAN_TOOL_CALL
from .video import Video, encode_videos, load_video, seconds_per_grid
from .vision import PixelCache


class VisionCollator:
    def __init__(self, processor, *, padding_side: str = "right", pad_to_multiple_of: int | None = None,
                 cache_bytes: int = 1 << 30, cache_dir: str | None = None, packing: bool = False,
                 loss_weights: bool = False, span_weights: tuple[float, float] = (1.0, 1.0)):
        self.processor = processor
        self.loss_weights = loss_weights
        self.span_weights = span_weights        # (reasoning, answer) multipliers by label_span
        self.packing = packing          # all samples in one row, no padding (see train/packing.py)
        self.seconds = 0.0              # spent collating (this process)
        self.pad_id = processor.tokenizer.pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pixels = PixelCache(processor.image_processor, cache_bytes, cache_dir)

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

    def media(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """Pixels and grids of the samples' images and videos, in row order."""
        out = {}
        images = [img for s in samples for img in (s.get("images") or [])]
        if images:
            pixel_values, grid = self.pixels.get(images)
            expected = [g for s in samples for g in (s.get("image_grid_thw") or [])]
            if expected and grid.tolist() != [list(g) for g in expected]:
                raise ValueError("image grids differ from the ones recorded when the dataset was "
                                 "built; rebuild it with this model's processor settings")
            out["pixel_values"], out["image_grid_thw"] = pixel_values, grid
        videos = [v for s in samples for v in (s.get("videos") or [])]
        if videos:     # frames folders, or videos already loaded (e.g. blanked by the evaluator)
            loaded = [v if isinstance(v, Video) else load_video(v) for v in videos]
            enc = encode_videos(self.processor.video_processor, loaded)
            out["pixel_values_videos"], out["video_grid_thw"] = enc["pixel_values_videos"], enc["video_grid_thw"]
            if "second_per_grid_ts" in self.processor.model_input_names:
                out["second_per_grid_ts"] = seconds_per_grid(self.processor.video_processor, loaded)
        return out

    def weights(self, samples: list[dict]) -> list[list[float]] | None:
        """Per-token loss weights of each sample, or None when every labelled token weighs 1."""
        spans = self.span_weights != (1.0, 1.0)
        if not self.loss_weights or not (spans or any(s.get("loss_weights") is not None for s in samples)):
            return None
        factor = {SPAN_NONE: 0.0, SPAN_REASONING: self.span_weights[0], SPAN_ANSWER: self.span_weights[1],
                  SPAN_TOOL_CALL: self.span_weights[1]}      # a tool call weighs as an answer
        out = []
        for s in samples:
            base = s.get("loss_weights") or [0.0 if x == IGNORE_INDEX else 1.0 for x in s["labels"]]
            if spans:
                base = [w * factor[k] for w, k in zip(base, s["label_span"])]
            out.append(base)
        return out

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.processor.create_mm_token_type_ids(input_ids.tolist()), dtype=torch.long)

    def packed(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """One row: the samples back to back, text positions restarting at 0 for each."""
        ids = torch.as_tensor([t for s in samples for t in s["input_ids"]], dtype=torch.long).unsqueeze(0)
        batch = {"input_ids": ids,
                 "position_ids": torch.cat([torch.arange(len(s["input_ids"])) for s in samples]).unsqueeze(0)}
        if "labels" in samples[0]:
            batch["labels"] = torch.as_tensor([t for s in samples for t in s["labels"]], dtype=torch.long).unsqueeze(0)
            weights = self.weights(samples)
            if weights is not None:
                batch["loss_weights"] = torch.tensor([w for row in weights for w in row]).unsqueeze(0)
        batch.update(self.media(samples))
        batch["mm_token_type_ids"] = self.mm_token_type_ids(ids)
        return batch

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        try:
            return self.packed(samples) if self.packing else self.padded(samples)
        finally:
            self.seconds += time.perf_counter() - started     # data time, for the run report

    def padded(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        ids = [s["input_ids"] for s in samples]
        batch = {
            "input_ids": self._pad(ids, self.pad_id),
            "attention_mask": self._pad([[1] * len(s) for s in ids], 0),
        }
        if "labels" in samples[0]:
            batch["labels"] = self._pad([s["labels"] for s in samples], IGNORE_INDEX)
            weights = self.weights(samples)
            if weights is not None:
                batch["loss_weights"] = self._pad(weights, 0.0, torch.float32)
        batch.update(self.media(samples))
        batch["mm_token_type_ids"] = self.mm_token_type_ids(batch["input_ids"])
        return batch


class VisionPreferenceCollator(VisionCollator):
    """Preference samples (`render_pair` output) -> the batch TRL's DPOTrainer computes its
    loss on: rows `prompt + chosen` for every sample, then `prompt + rejected` for every
    sample (right-padded), `completion_mask` on the replies only, and each prompt's media
    once per row (the chosen and rejected rows of a pair share the same images)."""

    def padded(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        rows, completion = [], []
        for side in ("chosen", "rejected"):
            for s in samples:
                prompt, reply = s["prompt_input_ids"], s[f"{side}_input_ids"]
                rows.append(prompt + reply)
                completion.append([0] * len(prompt) + [1] * len(reply))
        batch = {"input_ids": self._pad(rows, self.pad_id),
                 "attention_mask": self._pad([[1] * len(r) for r in rows], 0),
                 "completion_mask": self._pad(completion, 0)}
        batch.update(self.media(samples + samples))
        batch["mm_token_type_ids"] = self.mm_token_type_ids(batch["input_ids"])
        return batch
