"""`plan(...)`: per-GPU memory of a fine-tuning run, before buying or booking the GPUs.

Parameter counts come from the model built on the meta device (`models/shapes.py`), per
part (language model, vision tower, merger) and per LoRA target, so they are exact; the
rest is the arithmetic below, one term per line of the output:

- weights: bf16/fp16/fp32 bytes per parameter; QLoRA: NF4 (0.5 byte) for the language
  model's linear layers plus their quantisation constants (double-quantised absmax:
  about 1/64 byte per parameter), everything else in the compute dtype. ZeRO-3 divides
  by the GPU count; with parameter offload only about two layers are on the GPU.
- trainable weights, gradients, optimizer: LoRA adapters (or every unfrozen weight in a
  full fine-tune) with AdamW. Without DeepSpeed the states follow the weights' dtype
  (weight + gradient + 2 moments); DeepSpeed keeps fp32 master weights and moments (12
  bytes per trainable parameter) beside the compute-dtype copy and gradient. ZeRO-2/3
  divide gradients and optimizer state by the GPU count; optimizer offload moves the
  optimizer to CPU memory.
- activations: the tensors a Qwen2 decoder layer keeps for backward, per token, in the
  compute dtype: 6h + 2*kv + 4*I values (norm inputs / outputs, q, k, v, attention
  output, gate, up, activation, product); with gradient checkpointing only each layer's
  input (h) is kept, plus one layer's full set while it is recomputed. Memory-efficient
  attention (SDPA / flash) keeps no seq x seq matrix. TRL's fused LM head scores tokens in
  tiles (up to 4096 tokens x 32768 vocabulary entries, fp32), so no full logits matrix is held.
  On a CPU (no Triton) TRL folds each tile with torch operations that hold about six
  tile-sized tensors at once (the product, its scaled copy, the max-shifted copy, its
  exponential, the products for entropy and the target mask; measured on a Qwen2-VL-2B-wide
  model: +1.3-1.4 GB per vocabulary chunk at 1,773 tokens, a tile being 0.23 GB).
  DPO (`objective dpo`) scores two rows per sample, chosen and rejected; the reference's
  forward pass runs without gradients before the policy's and keeps nothing. GRPO
  (`objective grpo`) scores `num_generations` completion rows per prompt (seq_len: prompt +
  completion budget); its generation's KV cache lives before the training pass, not beside
  it, and is not counted.
- ZeRO-3 gathers a module's whole weights while it runs: the largest single weight (on Qwen
  VL models the vocabulary x hidden embedding, which TRL's fused head gathers again as the
  LM head) is whole on every rank for a while (measured: +0.93 GB fp32 on each of two CPU
  ranks through the LM head, the 2B's 151,936 x 1,536 embedding).
- vision: a frozen vision tower keeps nothing for backward (one block's activations are
  live at a time); a trained one keeps every block's.
- runtime: the CUDA context and allocator slack (0.75 GB + 8% of the rest), or a measured
  baseline (`runtime_gb`) when planning a CPU run; `device cpu`: the process before the
  model loads (`runtime_gb`, else 0.9 GB: Python, torch, transformers and DeepSpeed as
  measured on Linux) + 8% of the rest for the allocator.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

GB = 1e9
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
CPU_TILE_COPIES = 6          # tile-sized tensors TRL's torch fold of the LM head holds at once (no Triton)
CPU_RUNTIME_GB = 0.9         # a training process before its model loads, on a CPU


def _f(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class PlanRequest:
    """One planned run; each field is a `qvq-tune plan` flag."""
    model: str = field(metadata={"help": "checkpoint folder, or FAMILY-SIZE: qwen2_vl-2b/7b/72b (72b = "
                                         "QVQ-72B-Preview), qwen2_5_vl-3b/7b/32b/72b", "metavar": "DIR_OR_SIZE"})
    method: Literal["qlora", "lora", "full"] = _f("lora", "training method")
    objective: Literal["sft", "dpo", "grpo"] = _f("sft", "dpo: each sample is two rows (chosen, rejected) plus "
                                                         "the reference's forward pass; grpo: each prompt is "
                                                         "--num-generations completion rows")
    num_generations: int = _f(8, "grpo: completions sampled per prompt (--batch-size counts prompts)", metavar="N")
    device: Literal["gpu", "cpu"] = _f("gpu", "cpu: ranks on CPU processes (no CUDA context; peak resident memory)")
    gpus: int = _f(1, "GPUs (data parallel)")
    gpu_mem: float = _f(80.0, "memory per GPU, GB", metavar="GB")
    seq_len: int = _f(4096, "tokens per sample in the language model (text + image tokens)", metavar="N")
    images_per_sample: int = _f(1, "images per sample", metavar="N")
    image_pixels: int = _f(1003520, "processor max_pixels per image (1003520 = 1280 image tokens)", metavar="N")
    batch_size: int = _f(1, "samples per GPU per step", metavar="N")
    zero: Literal[0, 2, 3] = _f(0, "DeepSpeed ZeRO stage (0: none)")
    offload: bool = _f(False, "ZeRO-3 with parameters and optimizer state offloaded to CPU")
    lora_r: int = _f(16, "LoRA rank", metavar="R")
    lora_vision: bool = _f(False, "LoRA (or, full: training) on the vision tower and merger too")
    checkpointing: bool = _f(True, "gradient checkpointing (off: --no-checkpointing)", flag="--no-checkpointing")
    dtype: Literal["bfloat16", "float16", "float32"] = _f("bfloat16", "compute dtype")
    runtime_gb: float | None = _f(None, "measured runtime baseline in GB instead of the GPU estimate", metavar="GB")

    def __post_init__(self):
        from ..errors import UserError
        if self.gpus < 1 or self.gpu_mem <= 0 or self.seq_len < 1 or self.batch_size < 1:
            raise UserError("gpus, gpu_mem, seq_len and batch_size must be positive", key="plan")
        if self.num_generations < 1:
            raise UserError("--num-generations must be positive", key="num_generations")
        if self.offload and self.zero != 3:
            raise UserError("--offload needs --zero 3", key="offload")


@dataclass
class Plan:
    request: PlanRequest
    parameters: dict[str, int]              # language_model, vision, merger, trainable
    gb: dict[str, float]                    # per GPU, by term
    total_gb: float
    fits: bool
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _counts(req: PlanRequest):
    import torch

    from ..models.shapes import config_for, meta_model
    config, family = config_for(req.model)
    model = meta_model(config)
    text = config.text_config
    parts = {"language_model": 0, "vision": 0, "merger": 0}
    quantisable = lora = 0
    target = re.compile(family.lora_target_regex(vision=req.lora_vision))
    layer_sizes: dict[str, int] = {}
    quantised_weights: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if target.fullmatch(name):
                lora += req.lora_r * (module.in_features + module.out_features)
            if family.part_of(name) == "language_model" and not name.startswith(family.quant_skip_modules):
                quantisable += module.weight.numel()
                quantised_weights.add(f"{name}.weight")
    # the largest single weight ZeRO-3 gathers whole (4-bit ones counted as such)
    largest = max((p.numel(), n in quantised_weights) for n, p in model.named_parameters())
    for name, param in model.named_parameters():
        parts[family.part_of(name)] += param.numel()
        m = re.match(rf"{re.escape(family.language_model_prefix)}\.layers\.(\d+)\.", name)
        if m:
            layer_sizes[m.group(1)] = layer_sizes.get(m.group(1), 0) + param.numel()
    vision = config.vision_config
    embed = getattr(vision, "embed_dim", None) or vision.hidden_size
    mlp = getattr(vision, "intermediate_size", None) or embed * getattr(vision, "mlp_ratio", 4)
    shape = {"h": text.hidden_size, "I": text.intermediate_size, "layers": text.num_hidden_layers,
             "kv": text.num_key_value_heads * (getattr(text, "head_dim", None) or
                                               text.hidden_size // text.num_attention_heads),
             "vision_embed": embed, "vision_mlp": mlp, "vision_depth": vision.depth,
             "patch": vision.patch_size, "layer_params": max(layer_sizes.values()), "vocab": text.vocab_size,
             "largest_weight": largest}
    return parts, quantisable, lora, shape


def plan(req: PlanRequest) -> Plan:
    parts, quantisable, lora, s = _counts(req)
    return _estimate(req, parts, quantisable, lora, s)


def _estimate(req: PlanRequest, parts: dict, quantisable: int, lora: int, s: dict, advise: bool = True) -> Plan:
    b = BYTES[req.dtype]
    total_params = sum(parts.values())
    per_param = 0.5 + 1 / 64 if req.method == "qlora" else b     # of the quantisable weights
    weights = quantisable * per_param + (total_params - quantisable) * b
    if req.offload:
        weights = 2 * s["layer_params"] * per_param            # the layers being gathered
    elif req.zero == 3:
        weights /= req.gpus
    full = req.method == "full"
    trainable = (parts["language_model"] + (parts["vision"] + parts["merger"] if req.lora_vision else 0)
                 if full else lora)
    state_shard = req.gpus if req.zero >= 2 else 1
    adapters = 0.0 if full else trainable * b / (req.gpus if req.zero == 3 else 1)
    grads = trainable * b / state_shard
    optimizer = 0.0 if req.offload else trainable * (12 if req.zero else 2 * b) / state_shard
    rows = req.batch_size * {"sft": 1, "dpo": 2, "grpo": req.num_generations}[req.objective]
    tokens = req.seq_len * rows
    numel, quantised = s["largest_weight"]
    gathered = numel * (per_param if quantised and req.method == "qlora" else b) if req.zero == 3 else 0.0
    per_token_layer = 6 * s["h"] + 2 * s["kv"] + 4 * s["I"]
    kept = s["layers"] * s["h"] + per_token_layer if req.checkpointing else s["layers"] * per_token_layer
    activations = kept * tokens * b
    patches = req.images_per_sample * rows * req.image_pixels // s["patch"] ** 2
    vision_blocks = s["vision_depth"] if req.lora_vision else 1
    vision = (6 * s["vision_embed"] + 2 * s["vision_mlp"]) * patches * vision_blocks * b
    # one fused LM-head tile (TRL scores up to 4096 tokens x a 32768-wide vocabulary chunk at a time, fp32);
    # on a CPU its torch fold holds about six tile-sized tensors at once
    tile = min(tokens, 4096) * min(s["vocab"], 32768) * 4 * (CPU_TILE_COPIES if req.device == "cpu" else 1)
    gb = {"weights": weights, "zero3_gathered": gathered, "adapters": adapters, "gradients": grads,
          "optimizer": optimizer, "activations": activations, "vision_activations": vision, "lm_head_tile": tile}
    gb = {k: v / GB for k, v in gb.items()}
    if req.device == "cpu":
        gb["runtime"] = (req.runtime_gb if req.runtime_gb is not None else CPU_RUNTIME_GB) + 0.08 * sum(gb.values())
    else:
        gb["runtime"] = req.runtime_gb if req.runtime_gb is not None else 0.75 + 0.08 * sum(gb.values())
    gb = {k: round(v, 3) for k, v in gb.items()}
    total = round(sum(gb.values()), 2)
    result = Plan(req, {**parts, "trainable": trainable, "lora_parameters": lora}, gb, total,
                  total <= req.gpu_mem)
    if advise and not result.fits:
        result.advice = _advice(req, parts, quantisable, lora, s)
    return result


def _advice(req: PlanRequest, parts, quantisable, lora, s) -> list[str]:
    """Changes that make it fit, cheapest first (each tried alone)."""
    tries = [("enable gradient checkpointing", {"checkpointing": True}),
             ("use QLoRA (method: qlora)", {"method": "qlora"} if req.method == "lora" else None),
             ("shard with ZeRO-3 across the GPUs", {"zero": 3} if req.gpus > 1 and req.zero != 3 else None),
             (f"halve the tokens per sample (--seq-len {req.seq_len // 2}, or lower --max-pixels)",
              {"seq_len": max(1, req.seq_len // 2)}),
             ("offload parameters and optimizer to CPU (zero3_offload)",
              {"zero": 3, "offload": True} if req.gpus > 1 or req.zero == 3 else None),
             (f"use {req.gpus * 2} GPUs with ZeRO-3", {"gpus": req.gpus * 2, "zero": 3})]
    out = []
    for text, change in tries:
        if not change or all(getattr(req, k) == v for k, v in change.items()):
            continue
        trial = _estimate(dataclasses.replace(req, **change), parts, quantisable, lora, s, advise=False)
        out.append(f"{text}: {trial.total_gb:.1f} GB per GPU" + ("" if trial.fits else " (still too much)"))
    return out
