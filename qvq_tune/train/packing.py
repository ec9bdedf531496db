"""Padding-free batches for Qwen VL's multimodal RoPE: every sample of a micro-batch in one row.

TRL refuses packing and padding-free batches on image data for models with 3-D (multimodal)
rotary positions. Here the collator (`data/collate.py`, `packing=True`) concatenates a
micro-batch's samples into one row with no padding and sends 1-D text positions that
restart at 0 for each sample; `restart_positions_per_sample` hooks the model so that
before each forward those become the (4, 1, L) position ids transformers' Qwen VL models
take for packed input: the text positions (from which transformers builds a causal mask
that stays inside each sample: a block-diagonal mask for SDPA / eager, variable-length
sequences for flash attention) stacked on the 3-D M-RoPE positions, computed per sample
by the model's own `get_rope_index`, so every sample sees exactly the positions it would
see alone. Each sample gets its own images' and videos' grids (and Qwen2.5-VL's seconds
per video grid step), counted by their tokens: Qwen3-VL writes a video as one run of
tokens per frame, with timestamps between them. Labels need no change: each sample
starts with unlabelled prompt tokens, so no loss crosses a sample boundary. DPO is not packed: TRL's DPOTrainer sums each row's
log-probabilities into one sequence score (its own padding-free mode is disabled in TRL 1.16).
"""

from __future__ import annotations

import torch

from ..models.registry import ModelFamily

MODALITY_GRIDS = {1: "image_grid_thw", 2: "video_grid_thw"}      # mm_token_type_ids value -> grid input
PER_VIDEO = ("second_per_grid_ts",)          # other per-video inputs `get_rope_index` takes, when given


def packed_positions(multimodal, input_ids, mm_token_type_ids, text_positions, grids: dict) -> torch.Tensor:
    """(4, 1, L) position ids for one packed row: restarting text positions over the
    per-sample 3-D positions of `multimodal.get_rope_index`. `grids` holds the row's
    `image_grid_thw` / `video_grid_thw` (and any `PER_VIDEO` input), in row order."""
    merge = multimodal.config.vision_config.spatial_merge_size ** 2
    starts = (text_positions[0] == 0).nonzero().flatten().tolist() + [input_ids.shape[1]]
    used = {key: 0 for key in MODALITY_GRIDS.values()}
    pieces = []
    for a, b in zip(starts[:-1], starts[1:]):
        types = mm_token_type_ids[:, a:b]
        kwargs = {}
        for value, key in MODALITY_GRIDS.items():
            first, tokens = used[key], int((types == value).sum())
            while tokens > 0:                # this sample's media: the next grids, by token count
                tokens -= int(grids[key][used[key]].prod()) // merge
                used[key] += 1
            if used[key] > first:
                kwargs[key] = grids[key][first:used[key]]
                if value == 2:
                    kwargs.update({k: grids[k][first:used[key]] for k in PER_VIDEO if grids.get(k) is not None})
        if kwargs:
            rope, _ = multimodal.get_rope_index(input_ids[:, a:b], types, **kwargs)
        else:        # text only: plain positions on all three axes
            rope = torch.arange(b - a, device=input_ids.device).view(1, 1, -1).expand(3, 1, -1)
        pieces.append(rope)
    rope = torch.cat(pieces, dim=-1)
    return torch.cat([text_positions.view(1, 1, -1).to(rope.dtype), rope], dim=0)


def restart_positions_per_sample(model, family: ModelFamily):
    """Hook the model so a packed row (1-D `position_ids`, no attention mask) gets per-sample
    3-D positions; returns the hook handle."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model

    def before_model(module, args, kwargs):
        pos = kwargs.get("position_ids")
        if pos is None or pos.ndim != 2 or kwargs.get("attention_mask") is not None:
            return None
        grids = {key: kwargs.get(key) for key in (*MODALITY_GRIDS.values(), *PER_VIDEO)}
        kwargs = {**kwargs, "use_cache": False,        # transformers finds packed rows only without a cache
                  "position_ids": packed_positions(base.model, kwargs["input_ids"], kwargs["mm_token_type_ids"],
                                                   pos, grids)}
        return args, kwargs

    return base.register_forward_pre_hook(before_model, with_kwargs=True)
