"""Batches without media must still run the vision tower, or ZeRO-3 hangs.

Under DeepSpeed ZeRO-3 every rank must take part in gathering a module's parameters.
When one rank's micro-batch has images and another's has none, the first runs the
vision tower (and waits for its gathered weights) while the second never does: the run
hangs. Collectives must also come in the same order on every rank, so the tower has to
run where it would have run: before the language model. `keep_vision_tower_in_step`
hooks the model: a forward call without `pixel_values` / `pixel_values_videos` runs the
vision tower on the smallest possible dummy image just before the language model and
adds `0 x` the features to the language model's input embeddings, the path real image
features take. Every rank then gathers the same parameters in the same order, in the
forward and (when the tower trains) in the backward, and the loss is unchanged to the
last bit.
"""

from __future__ import annotations

import torch

from ..models.registry import ModelFamily

MEDIA_INPUTS = ("pixel_values", "pixel_values_videos")
USED_OUTPUTS = ("pooler_output", "deepstack_features")   # what the model feeds the language model


def dummy_image(family: ModelFamily, vision) -> dict:
    """`get_image_features` inputs for one image of one merged token."""
    param = next(vision.parameters())
    width = 3 * family.temporal_patch_size * family.patch_size ** 2
    return {"pixel_values": torch.zeros(family.merge_size ** 2, width, dtype=param.dtype, device=param.device),
            "image_grid_thw": torch.tensor([[1, family.merge_size, family.merge_size]], device=param.device)}


def _tensors(out):
    if torch.is_tensor(out):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from _tensors(v)


def zero_touch(features) -> torch.Tensor:
    """0 x (sum of the image features the language model would receive): a graph edge on
    exactly the path real images take (so gradients flow, and are reduced, in the same
    order on every rank), no value."""
    used = [t for t in _tensors([getattr(features, name, None) for name in USED_OUTPUTS]) if t.is_floating_point()]
    if not used:
        raise RuntimeError(f"the vision tower returned none of {USED_OUTPUTS}; update mixed_batches.USED_OUTPUTS")
    return sum(t.float().sum() for t in used) * 0.0


class _VisionKeeper:
    def __init__(self, multimodal, family: ModelFamily):
        self.multimodal, self.family = multimodal, family
        self.media = True

    def before_model(self, module, args, kwargs):
        self.media = any(kwargs.get(k) is not None for k in MEDIA_INPUTS)

    def before_language_model(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if self.media or embeds is None:
            return None
        inputs = dummy_image(self.family, self.multimodal.visual)
        zero = zero_touch(self.multimodal.get_image_features(**inputs))
        return args, {**kwargs, "inputs_embeds": embeds + zero.to(embeds.dtype)}


def keep_vision_tower_in_step(model, family: ModelFamily) -> list:
    """Make every forward call run the vision tower (see the module docstring); returns the hook handles."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    keeper = _VisionKeeper(base.model, family)
    language_model = base.get_submodule(family.language_model_prefix)
    return [base.register_forward_pre_hook(keeper.before_model, with_kwargs=True),
            language_model.register_forward_pre_hook(keeper.before_language_model, with_kwargs=True)]
