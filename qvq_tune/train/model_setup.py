"""Build the model a recipe trains: 4-bit + LoRA (QLoRA), LoRA, or full fine-tuning.

The family registry says which modules are the language model, the vision tower and
the merger; LoRA goes on the language model's projections (optionally the vision side
too); everything else stays frozen. Only public PEFT / transformers APIs are used.
"""

from __future__ import annotations

from ..models.loading import load_model
from ..models.registry import ModelFamily
from .config import Recipe


def freeze_prefixes(model, prefixes: tuple[str, ...]) -> None:
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)


def build_model(recipe: Recipe, family: ModelFamily, model_dir: str):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    quantized = recipe.method == "qlora"
    model = load_model(model_dir, dtype=recipe.dtype, load_in_4bit=quantized, quant_type=recipe.quant.type,
                       double_quant=recipe.quant.double_quant)
    model.config.use_cache = False
    if recipe.method == "full":
        if not recipe.lora.include_vision:
            freeze_prefixes(model, family.vision_prefixes + family.merger_prefixes)
        if recipe.optim.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.optim.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif recipe.optim.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=family.lora_target_regex(recipe.lora.include_vision),
                      bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def trainable_summary(model) -> dict:
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable, "total_parameters": total}


def zero3_partition(model) -> dict | None:
    """Parameter elements held by this rank vs in the whole model, under ZeRO-3 (else None)."""
    params = [p for p in model.parameters() if hasattr(p, "ds_numel")]
    if not params:
        return None
    return {"full_numel": int(sum(p.ds_numel for p in params)),
            "local_numel": int(sum(p.ds_tensor.numel() for p in params)),
            "partitioned_tensors": sum(1 for p in params if p.ds_tensor.numel() < p.ds_numel)}
