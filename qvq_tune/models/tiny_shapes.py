"""What a tiny checkpoint of each family looks like: sizes, and the per-layout configs.

`TinySpec` holds the sizes of a tiny model (the defaults are the ~0.9M-parameter
qwen2_vl that learns to see, see NOTES); each `ModelFamily` record points at one of the
`*_vision_config` builders below for its vision-tower layout, so the zoo (`tiny/zoo.py`)
never branches on a family name. A new family with a new vision layout adds a builder here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny model (defaults: the ~0.9M-parameter qwen2_vl that learns to see)."""
    bpe_vocab: int = 600
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    head_dim: int = 32
    intermediate: int = 512
    mrope_section: tuple[int, int, int] = (4, 6, 6)   # sums to head_dim / 2
    rope_theta: float = 1e4
    vision_embed: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vision_mlp_ratio: int = 4
    image_side: int = 112                            # min = max pixels = side^2
    initializer_range: float = 0.08                  # 0.02 leaves tiny models blind (NOTES.md)
    moe_experts: int = 4
    moe_top_k: int = 2
    moe_intermediate: int = 128
    chat_template: str | None = None                 # default: the family's
    system_prompt: str | None = None                 # identity only; the template decides
    license: str = "apache-2.0"                      # the LICENSE the zoo writes (a text in presets/licenses/)


def qwen2_vl_vision_config(s: TinySpec, fam) -> dict:
    """Qwen2-VL: `embed_dim` inside the tower, `hidden_size` = the language model's width."""
    return dict(_common(s, fam), embed_dim=s.vision_embed, hidden_size=s.hidden, mlp_ratio=s.vision_mlp_ratio)


def qwen2_5_vl_vision_config(s: TinySpec, fam) -> dict:
    """Qwen2.5-VL: gated MLP, window attention with some full-attention blocks."""
    return dict(_common(s, fam), hidden_size=s.vision_embed, intermediate_size=s.vision_embed * s.vision_mlp_ratio,
                out_hidden_size=s.hidden, fullatt_block_indexes=[s.vision_depth - 1],
                window_size=fam.pixel_factor * 2)


def qwen3_vl_vision_config(s: TinySpec, fam) -> dict:
    """Qwen3-VL: learnt position embeddings and deepstack mergers."""
    side = s.image_side // fam.patch_size
    return dict(_common(s, fam), hidden_size=s.vision_embed, intermediate_size=s.vision_embed * s.vision_mlp_ratio,
                out_hidden_size=s.hidden, num_position_embeddings=max(side, 16) ** 2,
                deepstack_visual_indexes=[0])


def _common(s: TinySpec, fam) -> dict:
    return dict(depth=s.vision_depth, num_heads=s.vision_heads, patch_size=fam.patch_size,
                spatial_merge_size=fam.merge_size, temporal_patch_size=fam.temporal_patch_size,
                initializer_range=s.initializer_range)
