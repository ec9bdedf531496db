"""What vLLM accepts as a LoRA adapter for Qwen2-VL / Qwen2.5-VL / Qwen3-VL, and the mends.

From vLLM's source (`vllm/config/lora.py`, `vllm/lora/peft_helper.py`,
`vllm/model_executor/models/qwen2_vl.py`, `qwen2_5_vl.py`, `qwen3_vl.py`):
- `--max-lora-rank` is one of `MAX_LORA_RANKS`; every adapter's r must be <= it;
- `modules_to_save` must be None, `use_dora` false, `bias` "none" (and no lora_B bias);
- one scale, lora_alpha / r (or / sqrt(r) with rsLoRA), applies to every module;
- LoRA is served on the language model; the vision tower and merger ("visual.",
  "visual.merger") take LoRA only when vLLM starts with `--enable-tower-connector-lora`
  (recent releases; older ones ignore them with a warning);
- adapter keys are mapped with each model's `hf_to_vllm_mapper`; all three map the
  `model.language_model.*` / `model.visual.*` layout (Qwen3-VL maps no other).

`for_vllm` either returns the tensors and config of a compatible adapter with one line per
change, or raises a UserError naming every reason it cannot be served.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..models.registry import ModelFamily
from .adapter import Adapter
from .names import ADAPTER_PREFIX, NameIndex

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)   # vllm/config/lora.py MaxLoRARanks


@dataclass
class ServableAdapter:
    tensors: dict[str, torch.Tensor]
    config: dict
    max_lora_rank: int
    tower_lora: bool
    changes: list[str] = field(default_factory=list)


def for_vllm(adapter: Adapter, family: ModelFamily, modules: NameIndex, *, max_lora_rank: int | None = None,
             tower_lora: bool = False) -> ServableAdapter:
    cfg = adapter.config
    refusals, changes = [], []
    if adapter.use_dora:
        refusals.append("it is a DoRA adapter (use_dora): vLLM does not support DoRA")
    if adapter.modules_to_save or adapter.whole:
        saved = adapter.modules_to_save or sorted(adapter.whole)
        refusals.append(f"it trains whole modules ({', '.join(saved)}): vLLM only supports modules_to_save being None")
    lora_bias = cfg.get("lora_bias") or any(p.b_bias is not None for p in adapter.pairs.values())
    if cfg.get("bias", "none") != "none" or lora_bias:
        refusals.append(f"it trains biases (bias={cfg.get('bias')!r}, lora_bias={cfg.get('lora_bias')}): "
                        "vLLM does not support adapter biases")
    if adapter.unsupported and not adapter.use_dora:
        refusals.append(f"it holds {adapter.unsupported[0]} (embedding LoRA / trainable tokens)")
    rank = adapter.rank
    if max_lora_rank is not None and max_lora_rank not in MAX_LORA_RANKS:
        raise UserError(f"--max-lora-rank must be one of vLLM's {', '.join(map(str, MAX_LORA_RANKS))}",
                        key="max-lora-rank")
    if max_lora_rank is None:
        max_lora_rank = next((r for r in MAX_LORA_RANKS if r >= rank), None)
        if max_lora_rank is None:
            refusals.append(f"its rank r={rank} is above the largest vLLM serves ({MAX_LORA_RANKS[-1]})")
        elif max_lora_rank != rank:
            changes.append(f"r={rank} is not one of vLLM's --max-lora-rank values: serve with --max-lora-rank "
                           f"{max_lora_rank}")
    elif rank > max_lora_rank:
        refusals.append(f"its rank r={rank} is above --max-lora-rank {max_lora_rank}")
    resolved = adapter.module_map(modules)
    renamed = sum(module != path for module, path in resolved.items())
    vision = family.vision_prefixes + family.merger_prefixes
    on_tower = sorted(m for m, r in resolved.items() if r.startswith(vision))
    off_targets = sorted(r for r in resolved.values() if not r.startswith(vision)
                         and r.rsplit(".", 1)[-1] not in family.lora_targets)
    if off_targets:
        refusals.append(f"it adapts {off_targets[0]} (and {len(off_targets) - 1} more), which vLLM's "
                        f"{family.model_class} does not map for LoRA (language-model targets: "
                        f"{', '.join(family.lora_targets)})")
    if refusals:
        raise UserError("vLLM cannot serve this adapter: " + "; ".join(refusals)
                        + ". Export a merged model instead: qvq-tune export merge", path=str(adapter.path))
    if on_tower and not tower_lora:
        changes.append(f"dropped {len(on_tower)} LoRA pairs on the vision tower / merger (e.g. {on_tower[0]}): "
                       "vLLM serves LoRA on the language model only unless started with "
                       "--enable-tower-connector-lora (pass --tower-lora to keep them); served this way the "
                       "model reads images as the base does, not as trained ('export merge' keeps them)")
    elif on_tower:
        changes.append(f"kept {len(on_tower)} LoRA pairs on the vision tower / merger: the serve command adds "
                       "--enable-tower-connector-lora (a recent, experimental vLLM option)")
    if renamed:
        changes.append(f"renamed {renamed} adapter modules to the model.language_model.* / model.visual.* layout, "
                       "the one vLLM's Qwen2-VL, Qwen2.5-VL and Qwen3-VL weight mappers all accept")
    alpha = cfg.get("lora_alpha") or rank
    r_cfg = int(cfg.get("r") or rank)
    served_scale = float(alpha) / r_cfg
    tensors, kept, folded = {}, [], 0
    for module, pair in adapter.pairs.items():
        if module in on_tower and not tower_lora:
            continue
        name = resolved[module]
        b = pair.b
        if abs(pair.scale / served_scale - 1) > 1e-6:     # rsLoRA, rank_pattern or alpha_pattern
            b = (pair.b.float() * (pair.scale / served_scale)).to(pair.b.dtype)
            folded += 1
        tensors[f"{ADAPTER_PREFIX}{name}.lora_A.weight"] = pair.a.contiguous()
        tensors[f"{ADAPTER_PREFIX}{name}.lora_B.weight"] = b.contiguous()
        kept.append(name)
    if folded:
        changes.append(f"folded the per-module scale of {folded} modules into lora_B (rsLoRA / rank_pattern / "
                       f"alpha_pattern): vLLM applies one lora_alpha / r = {served_scale:g} to every module")
    config = {**cfg, "target_modules": sorted(kept), "modules_to_save": None, "use_dora": False, "bias": "none",
              "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}, "r": r_cfg, "lora_alpha": alpha,
              "inference_mode": True}
    return ServableAdapter(tensors, config, max_lora_rank, bool(on_tower and tower_lora), changes)


def serve_command(base: str, name: str, adapter_dir: str, served: ServableAdapter,
                  processor_settings: dict | None = None) -> str:
    args = ["vllm", "serve", base, "--enable-lora", "--max-lora-rank", str(served.max_lora_rank),
            "--lora-modules", f"{name}={adapter_dir}"]
    if served.tower_lora:
        args.append("--enable-tower-connector-lora")
    if processor_settings:
        args += ["--mm-processor-kwargs", json.dumps(processor_settings, sort_keys=True)]
    return shlex.join(args)
