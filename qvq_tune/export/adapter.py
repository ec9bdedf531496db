"""A LoRA adapter folder as PEFT saves it: its config, its A/B pairs, and any tensors saved whole.

PEFT writes `adapter_config.json` and `adapter_model.safetensors` whose keys are
`base_model.model.<module>.lora_A.weight` / `.lora_B.weight` (plus `<param>` for modules
saved whole, `modules_to_save`, and trained biases). `Adapter.load` reads both and pairs
the tensors; the scale of each pair follows PEFT's rules (alpha / r, or alpha / sqrt(r) with
rsLoRA; per-module `rank_pattern` / `alpha_pattern`). Adapters are small (a few MB to a
few GB): they are read whole.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .names import ADAPTER_PREFIX, NameIndex

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PAIR = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[AB])(\.[^.]+)?\.(?P<param>weight|bias)$")
_UNSUPPORTED = ("lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B", "trainable_tokens")


@dataclass
class LoraPair:
    module: str                     # module path in the adapter's own layout (no PEFT prefix)
    a: torch.Tensor                 # (r, in)
    b: torch.Tensor                 # (out, r)
    scale: float
    b_bias: torch.Tensor | None = None   # `lora_bias=True`: a bias on lora_B

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    def delta(self, fan_in_fan_out: bool = False) -> torch.Tensor:
        """scale * B @ A in fp32, shaped like the module's weight."""
        d = self.scale * (self.b.float() @ self.a.float())
        return d.T if fan_in_fan_out else d


@dataclass
class Adapter:
    path: Path
    config: dict
    pairs: dict[str, LoraPair]
    whole: dict[str, torch.Tensor] = field(default_factory=dict)   # parameter name -> tensor saved whole
    unsupported: list[str] = field(default_factory=list)         # keys of features a plain LoRA merge lacks

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS

    @property
    def rank(self) -> int:
        return max((p.rank for p in self.pairs.values()), default=int(self.config.get("r") or 0))

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora")) or any("lora_magnitude_vector" in k for k in self.unsupported)

    @property
    def modules_to_save(self) -> list[str]:
        return list(self.config.get("modules_to_save") or [])

    def module_map(self, modules: NameIndex) -> dict[str, str]:
        """Each adapted module -> its path in the module tree `modules` holds; a module that
        matches none is refused."""
        out = {}
        for module in self.pairs:
            resolved = modules.resolve(module)
            if resolved is None:
                raise UserError(f"adapter module {module!r} matches no module of the base model",
                                path=str(self.weights_file), key=module)
            out[module] = resolved
        return out

    def renamed_tensors(self, modules: NameIndex, params: NameIndex | None = None) -> dict[str, torch.Tensor]:
        """The saved tensors, keyed as PEFT saves them, with each module path (and each
        whole parameter, given `params`) in the layout of the model they are loaded into."""
        from safetensors.torch import load_file
        mapping = self.module_map(modules)
        out = {}
        for key, tensor in load_file(self.weights_file).items():
            name = key.removeprefix(ADAPTER_PREFIX)
            module, sep, rest = name.partition(".lora_")
            if sep and module in mapping:
                name = f"{mapping[module]}.lora_{rest}"
            elif params is not None:
                name = params.resolve(name) or name
            out[ADAPTER_PREFIX + name] = tensor
        return out

    @classmethod
    def load(cls, folder: str | Path) -> Adapter:
        from peft.utils.other import get_pattern_key
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG).is_file():
            raise UserError(f"no {CONFIG}: not a PEFT adapter folder", path=str(folder))
        if not (folder / WEIGHTS).is_file():
            found = ", ".join(sorted(p.name for p in folder.glob("adapter_model*"))) or "none"
            raise UserError(f"no {WEIGHTS} (found: {found}); save the adapter with safe_serialization=True",
                            path=str(folder))
        try:
            config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"not valid JSON ({exc.msg})", path=str(folder / CONFIG), line=exc.lineno) from None
        if config.get("peft_type", "LORA") != "LORA":
            raise UserError(f"peft_type is {config.get('peft_type')!r}; only LoRA adapters are exported",
                            path=str(folder / CONFIG), key="peft_type")
        tensors = load_file(folder / WEIGHTS)
        halves: dict[str, dict] = {}
        whole, unsupported = {}, []
        for key, tensor in tensors.items():
            name = key.removeprefix(ADAPTER_PREFIX)
            if any(marker in name for marker in _UNSUPPORTED):
                unsupported.append(key)
                continue
            m = _PAIR.match(name)
            if m:
                halves.setdefault(m["module"], {})[f"{m['side']}.{m['param']}"] = tensor
            else:
                whole[name] = tensor
        pairs = {}
        alpha, r_default = float(config.get("lora_alpha") or 0), config.get("r")
        alpha_pattern = config.get("alpha_pattern") or {}
        for module, parts in sorted(halves.items()):
            if "A.weight" not in parts or "B.weight" not in parts:
                missing = "lora_B" if "A.weight" in parts else "lora_A"
                raise UserError(f"{module} has no {missing}.weight: the adapter file is incomplete",
                                path=str(folder / WEIGHTS), key=module)
            r = int(parts["A.weight"].shape[0])
            a = float(alpha_pattern[get_pattern_key(alpha_pattern, module)]) if alpha_pattern and \
                get_pattern_key(alpha_pattern, module) in alpha_pattern else alpha
            scale = a / math.sqrt(r) if config.get("use_rslora") else a / r
            pairs[module] = LoraPair(module, parts["A.weight"], parts["B.weight"], scale, parts.get("B.bias"))
        if not pairs and r_default is None:
            raise UserError("the adapter holds no LoRA weights", path=str(folder / WEIGHTS))
        return cls(folder, config, pairs, whole, unsupported)
