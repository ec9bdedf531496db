"""Typed training recipes, mirrored one-to-one by the YAML files in `recipes/`.

`load_recipe(path)` reads YAML into `Recipe` and validates it before any model loads or
any process launches: unknown keys, wrong types and impossible combinations are user
errors naming the file and the key. A bare name (`demo_qlora_zero3`) that is not a file
is looked up among the recipes shipped in the package.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .. import presets
from ..errors import UserError

Objective = Literal["sft"]
Method = Literal["qlora", "lora", "full"]
DType = Literal["float32", "bfloat16", "float16"]


@dataclass
class DataConfig:
    train: str = ""                       # a dataset folder written by `qvq-tune data build`
    eval: str | None = None


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    include_vision: bool = False          # also adapt the vision tower and merger

    def __post_init__(self):
        if self.r <= 0:
            raise ValueError("lora.r must be positive")


@dataclass
class QuantConfig:
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


@dataclass
class OptimConfig:
    max_steps: int = 400
    per_device_batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    warmup_steps: int = 30
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    min_lr_ratio: float = 0.0             # cosine only: decay to this fraction of lr, not to 0
    weight_decay: float = 0.0
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 0                   # 0: only the final adapter

    def __post_init__(self):
        for key in ("max_steps", "per_device_batch_size", "grad_accum"):
            if getattr(self, key) <= 0:
                raise ValueError(f"optim.{key} must be positive")
        if self.lr <= 0:
            raise ValueError("optim.lr must be positive")
        if not 0 <= self.min_lr_ratio < 1:
            raise ValueError("optim.min_lr_ratio must be in [0, 1)")
        if self.min_lr_ratio and self.scheduler != "cosine":
            raise ValueError("optim.min_lr_ratio needs optim.scheduler: cosine")


@dataclass
class LaunchConfig:
    accelerate_config: str = "single"     # a preset in accelerate_configs/ or a path
    num_processes: int = 1


@dataclass
class Recipe:
    name: str = "run"
    objective: Objective = "sft"
    model: str = "tiny"                   # a checkpoint folder, or "tiny" (the embedded base)
    method: Method = "qlora"
    dtype: DType = "float32"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    report_to: Literal["none", "wandb", "tensorboard"] = "none"

    def __post_init__(self):
        if not self.data.train:
            raise ValueError("data.train is required (a folder written by `qvq-tune data build`)")
        if self.launch.num_processes < 1:
            raise ValueError("launch.num_processes must be >= 1")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(value, tp, key: str):
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{key} must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, key)
            except ValueError:
                pass
        raise ValueError(f"{key} has the wrong type ({type(value).__name__})")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or (isinstance(tp, type) and not isinstance(value, tp)):
        raise ValueError(f"{key} must be {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or 'recipe'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown key {prefix}{unknown[0]} (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, value, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _check_type(value, tp, prefix + f.name)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file, or the packaged recipe of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = presets.find(presets.RECIPES, str(name_or_path))
    if packaged is not None:
        return packaged
    raise UserError(f"recipe file not found (nor a packaged recipe: {', '.join(presets.names(presets.RECIPES))})",
                    path=str(path))


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    path = recipe_path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"not valid YAML: {getattr(exc, 'problem', exc)}", path=str(path),
                        line=mark.line + 1 if mark else None) from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return recipe_from_dict(data, where=str(path))


def recipe_from_dict(data: dict, where: str = "<recipe>") -> Recipe:
    try:
        return from_dict(Recipe, data)
    except ValueError as exc:
        raise UserError(str(exc), path=where) from None
