"""Build the model a recipe trains: 4-bit + LoRA (QLoRA), LoRA, or full fine-tuning.

The family registry says which modules are the language model, the vision tower and
the merger. LoRA goes on the language model's projections (or the recipe's own
targets), optionally on the vision tower and the merger; an unfrozen vision tower or
merger trains fully beside the adapter. Everything is seeded from the recipe before any
weight is created, so two runs with one seed start from the same adapter. Only public
PEFT / transformers APIs are used.
"""

from __future__ import annotations

import torch

from ..models.loading import load_model
from ..models.registry import ModelFamily
from ..recipe import Recipe


def freeze_prefixes(model, prefixes: tuple[str, ...]) -> None:
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)


def frozen_prefixes(recipe: Recipe, family: ModelFamily) -> tuple[str, ...]:
    """Module prefixes that full fine-tuning keeps frozen."""
    parts = {"vision": family.vision_prefixes, "merger": family.merger_prefixes,
             "language_model": (family.language_model_prefix, "lm_head")}
    return tuple(p for part, prefixes in parts.items() if getattr(recipe.freeze, part) for p in prefixes)


def lora_config(recipe: Recipe, family: ModelFamily):
    from peft import LoraConfig
    lo = recipe.lora
    fully_trained = list(lo.modules_to_save)
    if not recipe.freeze.vision:
        fully_trained += family.vision_prefixes
    if not recipe.freeze.merger:
        fully_trained += family.merger_prefixes
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                      target_modules=family.lora_target_regex(lo.targets, vision=lo.vision, merger=lo.merger),
                      modules_to_save=fully_trained or None, use_dora=lo.dora, use_rslora=lo.rslora,
                      bias="none", task_type="CAUSAL_LM")


def build_model(recipe: Recipe, family: ModelFamily, model_dir: str, *, adapter: str | None = None):
    """The model to train; `adapter` (a PEFT folder) is loaded trainable instead of a new one."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    set_seed(recipe.optim.seed)          # before any weight (LoRA init included) is created
    if recipe.kernels.liger:
        from .kernels import apply_liger
        apply_liger(family)              # patches module classes: before the model is built
    loading = recipe.loading()
    quantized = loading["load_in_4bit"]
    model = load_model(model_dir, **loading)
    model.config.use_cache = False
    if recipe.kernels.patch_embed_matmul:
        from .kernels import patch_embed_as_matmul
        patch_embed_as_matmul(model)     # before PEFT, so a LoRA-wrapped patch embedding keeps it
    checkpointing = {"use_reentrant": False}
    if recipe.method == "full":
        freeze_prefixes(model, frozen_prefixes(recipe, family))
        if recipe.optim.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        return model
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.optim.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing)
    elif recipe.optim.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    else:
        model = get_peft_model(model, lora_config(recipe, family))
    keep_frozen_vision_out_of_backward(model, family)
    return model


def _not_an_input_embedding():
    raise NotImplementedError("a frozen vision tower: its patch embedding is no input to train through")


def keep_frozen_vision_out_of_backward(model, family: ModelFamily) -> bool:
    """With nothing trainable in the vision tower (merger included), no gradient need flow
    through it. transformers' `enable_input_require_grads` (which PEFT's k-bit preparation and
    TRL's trainers call for gradient checkpointing) hooks every sub-model's input embeddings,
    the vision tower's patch embedding among them, so every step backpropagated through (and,
    checkpointed, re-ran) the whole frozen tower; under ZeRO-3 it also gathered its weights
    again for that backward. The tower then answers `get_input_embeddings` with
    NotImplementedError, which transformers skips, and the hooks already on it are removed.
    Returns whether the tower stays out of the backward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if any(p.requires_grad and family.part_of(n) != "language_model" for n, p in base.named_parameters()):
        return False
    tower = base.get_submodule(family.vision_tower_prefix)
    try:
        embedding = tower.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return True                    # no input embedding: transformers never hooks it
    tower.get_input_embeddings = _not_an_input_embedding
    # each enable_input_require_grads call adds a hook and keeps only the last call's
    # handles, so the hooks already there are found on the module itself
    for key, hook in list(embedding._forward_hooks.items()):
        if getattr(hook, "__name__", "") == "make_inputs_require_grads":
            del embedding._forward_hooks[key]
    return True


def optimizer_groups(model, recipe: Recipe, family: ModelFamily) -> list[dict] | None:
    """AdamW parameter groups with the recipe's per-part learning rates (vision tower,
    merger, language model; no weight decay on biases and norms), or None when all parts
    share `optim.lr`."""
    o = recipe.optim
    lrs = {"language_model": o.lr, "vision": o.vision_lr or o.lr, "merger": o.merger_lr or o.lr}
    if o.vision_lr is None and o.merger_lr is None:
        return None
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((family.part_of(name), param.ndim >= 2), []).append(param)
    return [{"params": params, "lr": lrs[part], "weight_decay": o.weight_decay if decay else 0.0}
            for (part, decay), params in sorted(groups.items())]


def trainable_summary(model) -> dict:
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad})
    return {"trainable_parameters": trainable, "total_parameters": total, "trainable_dtypes": dtypes}


def zero3_holdings(model) -> dict | None:
    """What this rank holds of the model's weights under ZeRO-3 (else None), read from
    DeepSpeed's own parameter state: a tensor whose gathered data is present (`ds_status`
    AVAILABLE, as persistent tensors under `stage3_param_persistence_threshold` stay between
    steps) is held whole; any other holds only its partition (`ds_tensor`) here. Bytes count
    the whole copies plus every partition this rank keeps."""
    params = [p for p in model.parameters() if hasattr(p, "ds_numel")]
    if not params:
        return None
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    def held_whole(p) -> bool:
        return p.ds_status == ZeroParamStatus.AVAILABLE and p.data.numel() == p.ds_numel
    whole = [p for p in params if held_whole(p)]
    parted = [p for p in params if not held_whole(p)]
    return {"tensors": len(params), "numel": int(sum(p.ds_numel for p in params)),
            "whole_tensors": len(whole), "whole_numel": int(sum(p.ds_numel for p in whole)),
            "whole_bytes": int(sum(p.ds_numel * p.element_size() for p in whole)),
            "partitioned_tensors": len(parted), "partitioned_numel": int(sum(p.ds_numel for p in parted)),
            "partition_numel": int(sum(p.ds_tensor.numel() for p in parted)),
            "partition_bytes": int(sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params)),
            "largest_whole_numel": max((int(p.ds_numel) for p in whole), default=0),
            "smallest_partitioned_numel": min((int(p.ds_numel) for p in parted), default=0)}


def zero3_partition(model) -> dict | None:
    """Every rank's `zero3_holdings`, gathered (a collective: all ranks call it), with rank 0's
    elements held against the whole model's (`local_numel` / `full_numel`), or None without ZeRO-3."""
    mine = zero3_holdings(model)
    if mine is None:
        return None
    ranks = [mine]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        ranks = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, mine)
    return {"full_numel": mine["numel"], "local_numel": mine["whole_numel"] + mine["partition_numel"],
            "whole_tensors": mine["whole_tensors"], "partitioned_tensors": mine["partitioned_tensors"],
            "ranks": ranks}


def keep_trainable_dtype(model, dtype: str) -> None:
    """Put trainable weights back in the recipe's compute dtype. (TRL's trainers cast a
    quantised model's adapters to bf16, which a CPU without native bf16 runs 15-46x slower.)"""
    from ..models.loading import DTYPES
    target = DTYPES[dtype]
    for param in model.parameters():
        if param.requires_grad and param.dtype != target:
            param.data = param.data.to(target)


def adamw(model, recipe: Recipe, family: ModelFamily):
    """The optimizer transformers' `adamw_torch` would build, with per-part learning rates;
    None (let the trainer build it) when every part uses `optim.lr`."""
    groups = optimizer_groups(model, recipe, family)
    if groups is None:
        return None
    return torch.optim.AdamW(groups, lr=recipe.optim.lr, betas=(0.9, recipe.optim.adam_beta2), eps=1e-8)
