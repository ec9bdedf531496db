"""Typed training recipes, mirrored one-to-one by the YAML files in `recipes/`.

`load_recipe(path)` reads YAML into `Recipe` and validates it before any model loads or
any process launches: unknown keys, wrong types and impossible combinations are user
errors naming the file and the key. A bare name (`demo_qlora_zero3`) that is not a file
is looked up among the recipes shipped in the package.

Each objective has one recipe section (`SECTION_OF`), a dataclass that checks its own
values and, in `check_recipe`, what it needs of the rest of the recipe. A section of
another objective left at its defaults is ignored; set, it is an error (it would not
apply). The objective itself (its trainer, data kind, checks, report keys) is a record in
its module, `train/<objective>.py` (`train/objectives.py`).

It sits below the three jobs: a run folder's `recipe.yaml` is read back as a `Recipe`
(`RunFolder.recipe()`) by training, evaluation and export alike, and `Recipe.loading()` is
the one translation of a recipe into the arguments that load its base model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from . import presets
from .errors import UserError

# objective -> its recipe section; the objective's record lives in `train/<objective>.py`
SECTION_OF = {"sft": "loss", "dpo": "dpo", "grpo": "grpo"}
Objective = Literal[tuple(SECTION_OF)]
Method = Literal["qlora", "lora", "full"]
DType = Literal["float32", "bfloat16", "float16"]
DpoLoss = Literal["sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero",
                  "apo_down", "sigmoid_norm"]


class RecipeValueError(ValueError):
    """A bad recipe value; `key` is the dotted key at fault (None: the recipe as a whole).
    Every check raises it with its key, so the line of that key can be shown."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def invalid(key: str, problem: str) -> RecipeValueError:
    """`invalid("lora.r", "must be positive")`: the error "lora.r must be positive", at lora.r."""
    return RecipeValueError(f"{key} {problem}", key)


@dataclass
class DataConfig:
    train: str = ""                       # a folder written by `qvq-tune data build` (or its dataset/ / preference/)
    eval: str | None = None               # the same, for validation loss during training
    shuffle: bool = True                  # False: samples in dataset order (e.g. a curriculum)
    packing: bool = False                 # SFT: each micro-batch's samples in one row, no padding
    workers: int = 0                      # data-loading worker processes (0: in the training process)
    # Processed pixels kept per image content: "memory" (LRU, per data-loading process, bounded by
    # pixel_cache_mb) or "disk" (also across runs). Off by default: on the demo's images processing
    # costs ~0.3 ms each while the float32 pixels held cost ~0.3 MB each (trainer_args.pixel_cache).
    pixel_cache: Literal["off", "memory", "disk"] = "off"
    pixel_cache_mb: int = 1024            # memory bound of the pixel cache, per data-loading process


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: list[str] | str | None = None  # leaf names in the language model, or one regex; default: the family's
    vision: bool = False                  # LoRA on the vision tower's linear layers too
    merger: bool = False                  # LoRA on the vision-language merger too
    modules_to_save: list[str] = field(default_factory=list)  # trained fully, saved with the adapter
    dora: bool = False                    # weight-decomposed LoRA
    rslora: bool = False                  # rank-stabilised scaling (alpha / sqrt(r))

    def __post_init__(self):
        if self.r <= 0:
            raise invalid("lora.r", "must be positive")
        if isinstance(self.targets, list) and not self.targets:
            raise invalid("lora.targets", "must name at least one module (or be left out)")


@dataclass
class FreezeConfig:
    """Which parts stay frozen. Full fine-tuning trains what is not frozen; with LoRA, an
    unfrozen vision tower or merger is trained fully beside the adapter (modules_to_save)."""
    vision: bool = True
    merger: bool = True
    language_model: bool = False          # full fine-tuning only: train just the vision side


@dataclass
class QuantConfig:
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


@dataclass
class OptimConfig:
    max_steps: int = 400
    per_device_batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3                      # the language model's (and the adapter's)
    vision_lr: float | None = None        # default: lr
    merger_lr: float | None = None        # default: lr
    warmup_steps: int = 30
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    min_lr_ratio: float = 0.0             # cosine only: decay to this fraction of lr, not to 0
    weight_decay: float = 0.0
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 0                   # 0: only the final adapter; >0: resumable checkpoints
    save_total_limit: int | None = None   # keep at most this many checkpoints (the best is kept too)
    eval_steps: int = 0                   # >0 with data.eval: validation loss every N steps
    keep_best: bool = True                # with eval_steps: end with the checkpoint of lowest eval loss

    def __post_init__(self):
        for key in ("max_steps", "per_device_batch_size", "grad_accum", "logging_steps"):
            if getattr(self, key) <= 0:
                raise invalid(f"optim.{key}", "must be positive")
        for key in ("lr", "vision_lr", "merger_lr"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise invalid(f"optim.{key}", "must be positive")
        for key in ("save_steps", "eval_steps", "warmup_steps"):
            if getattr(self, key) < 0:
                raise invalid(f"optim.{key}", "must be >= 0")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise invalid("optim.save_total_limit", "must be >= 1")
        if not 0 <= self.min_lr_ratio < 1:
            raise invalid("optim.min_lr_ratio", "must be in [0, 1)")
        if self.min_lr_ratio and self.scheduler != "cosine":
            raise invalid("optim.min_lr_ratio", "needs optim.scheduler: cosine")


@dataclass
class LossConfig:
    """Objective sft: per-token loss weights by span (the builder marks reasoning and final-answer tokens), and
    how the SFT loss reads the LM head (`train/weighted_sft.py`): "fused" is TRL's chunked head
    over the positions it picks (all of them off CUDA), with its entropy and token-accuracy
    metrics; "labelled" projects only the positions whose next token is labelled, through the
    model's own head (`logits_to_keep`), as ms-swift does; "auto": fused on CUDA, labelled elsewhere."""
    reasoning_weight: float = 1.0
    answer_weight: float = 1.0
    lm_head: Literal["auto", "fused", "labelled"] = "auto"

    def __post_init__(self):
        for key in ("reasoning_weight", "answer_weight"):
            if getattr(self, key) < 0:
                raise invalid(f"loss.{key}", "must be >= 0")

    def check_recipe(self, recipe: "Recipe") -> None:
        pass


@dataclass
class DpoConfig:
    beta: float = 0.1
    loss_type: DpoLoss = "sigmoid"
    sft_weight: float = 0.0               # > 0 adds an SFT (NLL) term on the chosen reply
    start_adapter: str | None = None      # an SFT adapter (or run folder) to start from; None: a new adapter
    chosen_logp_drop_warning: float = 10.0  # warn when chosen log-prob falls this far below its start

    def __post_init__(self):
        if self.beta <= 0:
            raise invalid("dpo.beta", "must be positive")
        if self.sft_weight < 0:
            raise invalid("dpo.sft_weight", "must be >= 0")

    def check_recipe(self, recipe: "Recipe") -> None:
        if recipe.method == "full":
            raise RecipeValueError("objective dpo needs method lora or qlora: the reference model is the starting "
                                   "policy with its adapter frozen or disabled, never a second full copy of the "
                                   "weights", "objective")
        if recipe.data.packing:
            raise invalid("data.packing", "applies to objective sft: TRL's DPOTrainer scores one sequence per "
                                          "row (its own padding-free mode is disabled in TRL 1.16)")


@dataclass
class GrpoConfig:
    """Objective grpo: sampled replies to built prompts, scored against their gold answers
    (`train/grpo.py`, rewards: `train/rewards.py`). `optim.per_device_batch_size` counts
    completions (as in TRL): 64 with num_generations 8 is 8 prompts per step and process."""
    num_generations: int = 8              # completions sampled per prompt (one group)
    max_completion_tokens: int = 256      # the completion budget
    temperature: float = 0.7              # 1.0 left the tiny base's groups without spread (issue 17)
    top_p: float = 1.0
    beta: float = 0.0                     # KL penalty to the starting policy (0: no reference pass)
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    mask_truncated: bool = False          # leave completions that hit the budget out of the loss (DAPO)
    rewards: list[str] = field(default_factory=lambda: ["correct", "format"])  # names or module:function
    reward_weights: list[float] | None = None   # one per reward; default: all 1
    overlong_cache: int | None = None     # reward overlong: the penalty ramps over the budget's last N tokens
                                          # (default: a quarter of the budget)
    style: Literal["auto", "qvq", "think", "answer-only"] = "auto"  # auto: the build's reasoning format
    start_adapter: str | None = None      # an SFT adapter (or run folder) to start from; None: a new adapter
    use_vllm: bool = False                # generate with vLLM (GPU only; colocated with training by default)
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    zero_spread_warning: float = 0.8      # warn when this share of groups has no reward spread, 3 logs running
    length_collapse_warning: float = 0.3  # warn when mean completion length falls below this share of its start

    def __post_init__(self):
        if self.num_generations < 2:
            raise invalid("grpo.num_generations", "must be >= 2 (advantages compare replies within a group)")
        for key in ("max_completion_tokens", "temperature", "overlong_cache"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise invalid(f"grpo.{key}", "must be positive")
        if self.overlong_cache is not None and self.overlong_cache > self.max_completion_tokens:
            raise invalid("grpo.overlong_cache", "must be <= grpo.max_completion_tokens")
        if not 0 < self.top_p <= 1:
            raise invalid("grpo.top_p", "must be in (0, 1]")
        if self.beta < 0:
            raise invalid("grpo.beta", "must be >= 0")
        if not self.rewards:
            raise invalid("grpo.rewards", "must name at least one reward")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise invalid("grpo.reward_weights", f"needs one weight per reward ({len(self.rewards)})")

    def check_recipe(self, recipe: "Recipe") -> None:
        if recipe.method == "full" and self.beta:
            raise invalid("grpo.beta", "> 0 needs method lora or qlora: the reference is the starting policy with "
                                       "its adapter disabled, never a second full copy of the weights")
        if recipe.data.packing:
            raise invalid("data.packing", "applies to objective sft: GRPO scores each completion in its own row")
        o = recipe.optim
        per_step = o.per_device_batch_size * recipe.launch.num_processes * o.grad_accum
        if per_step % self.num_generations:
            raise invalid("optim.per_device_batch_size", f"x launch.num_processes x optim.grad_accum ({per_step}) "
                          f"must be a multiple of grpo.num_generations ({self.num_generations}): the batch counts "
                          "completions, whole groups of them")


@dataclass
class KernelConfig:
    liger: bool = False                   # Liger's fused RMSNorm / LayerNorm / SwiGLU / M-RoPE (GPU)
    patch_embed_matmul: bool = True       # the vision patch embedding (a Conv3d) as one matmul


@dataclass
class ProfileConfig:
    """torch's profiler over a few steps on every rank -> RUN/profile/rank{R}.json (`train/profile.py`)."""
    steps: int = 0                        # 0: off
    start_step: int = 5                   # steps to run before profiling (warm-up)
    trace: bool = False                   # also a Chrome trace per rank

    def __post_init__(self):
        for key in ("steps", "start_step"):
            if getattr(self, key) < 0:
                raise invalid(f"profile.{key}", "must be >= 0")


@dataclass
class LaunchConfig:
    accelerate_config: str = "single"     # a packaged preset (accelerate_configs/) or a path
    num_processes: int = 1


@dataclass
class Recipe:
    name: str = "run"
    objective: Objective = "sft"
    model: str = "tiny"                   # a checkpoint folder, "tiny" (the embedded base) or a family name
    method: Method = "qlora"
    dtype: DType = "float32"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    report_to: Literal["none", "wandb", "tensorboard"] = "none"

    def __post_init__(self):
        if not self.data.train:
            raise invalid("data.train", "is required (a folder written by `qvq-tune data build`)")
        if self.launch.num_processes < 1:
            raise invalid("launch.num_processes", "must be >= 1")
        self.check_sections()
        if self.method == "full" and self.freeze.vision and self.freeze.merger and self.freeze.language_model:
            raise RecipeValueError("freeze: every part is frozen, nothing would train", "freeze")
        if self.method != "full" and self.freeze.language_model is not False:
            raise invalid("freeze.language_model", "applies to method full (LoRA keeps the base frozen)")
        if self.optim.eval_steps and not self.data.eval:
            raise invalid("optim.eval_steps", "needs data.eval")
        if self.optim.keep_best and self.optim.eval_steps and self.optim.save_steps \
                and self.optim.save_steps % self.optim.eval_steps:
            raise invalid("optim.save_steps", "must be a multiple of optim.eval_steps to keep the best checkpoint")
        if self.data.workers < 0:
            raise invalid("data.workers", "must be >= 0")

    def check_sections(self) -> None:
        """The objective's section checks the recipe; another objective's section must be left unset."""
        for objective, name in SECTION_OF.items():
            section = getattr(self, name)
            if objective == self.objective:
                section.check_recipe(self)
                continue
            default = type(section)()
            changed = [f.name for f in dataclasses.fields(section)
                       if getattr(section, f.name) != getattr(default, f.name)]
            if changed:
                raise invalid(f"{name}.{changed[0]}", f"applies to objective {objective}")

    def section(self):
        """The recipe section of this recipe's objective (`SECTION_OF`)."""
        return getattr(self, SECTION_OF[self.objective])

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def loading(self) -> dict:
        """`models.loading.load_model` keyword arguments that load the base as this recipe trains it."""
        return loading_arguments(self.method, self.dtype, self.quant)


def loading_arguments(method: Method, dtype: DType, quant: QuantConfig | None = None) -> dict:
    """The one translation of a recipe's settings into `models.loading.load_model` keyword
    arguments: the dtype and, for QLoRA, 4-bit with the recipe's quant type and double
    quantisation (`quant=None`: the recipe defaults). Training, evaluation and export all load
    a run's base through it, so none of them can drop a setting the others carry."""
    quant = quant or QuantConfig()
    return {"dtype": dtype, "load_in_4bit": method == "qlora", "quant_type": quant.type,
            "double_quant": quant.double_quant}


# Names users reach for that live elsewhere in the recipe: `learning_rate` -> `optim.lr`.
ALIASES = {"learning_rate": "optim.lr", "lr": "optim.lr", "batch_size": "optim.per_device_batch_size",
           "per_device_train_batch_size": "optim.per_device_batch_size", "steps": "optim.max_steps",
           "max_steps": "optim.max_steps", "gradient_accumulation_steps": "optim.grad_accum",
           "warmup": "optim.warmup_steps", "warmup_steps": "optim.warmup_steps", "seed": "optim.seed",
           "lora_r": "lora.r", "rank": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
           "target_modules": "lora.targets", "beta": "dpo.beta", "loss_type": "dpo.loss_type",
           "train_dataset": "data.train", "dataset": "data.train", "eval_dataset": "data.eval",
           "model_name_or_path": "model", "num_processes": "launch.num_processes",
           "accelerate_config": "launch.accelerate_config", "deepspeed": "launch.accelerate_config",
           "bf16": "dtype", "quantization": "quant.type", "double_quant": "quant.double_quant"}


def all_keys(cls=None, prefix: str = "") -> list[str]:
    """Every dotted key a recipe may hold."""
    cls = cls or Recipe
    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def nearest_key(key: str) -> str | None:
    """The valid dotted key a misspelt one most likely meant."""
    import difflib
    leaf = key.rsplit(".", 1)[-1]
    valid = all_keys()
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
    for name, table in ((key, {k: k for k in valid}), (leaf, ALIASES), (leaf, by_leaf)):
        hit = difflib.get_close_matches(name, list(table), n=1, cutoff=0.75)
        if hit:
            return table[hit[0]]
    return None


def _check_type(value, tp, key: str):
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise RecipeValueError(f"{key} must be one of {list(typing.get_args(tp))}, got {value!r}", key)
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise RecipeValueError(f"{key} must be a list, got {type(value).__name__} {value!r}", key)
        return [_check_type(v, item, key) for v in value]
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
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        raise RecipeValueError(f"{key} must be {names}, got {type(value).__name__} {value!r}", key)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or (isinstance(tp, type) and not isinstance(value, tp)):
        raise RecipeValueError(f"{key} must be {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}",
                               key)
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise RecipeValueError(f"{prefix.rstrip('.') or 'the recipe'} must be a mapping", prefix.rstrip(".") or None)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - names)
    if unknown:
        key = prefix + unknown[0]
        hint = nearest_key(key)
        raise RecipeValueError(f"unknown key {key}" + (f" (did you mean {hint}?)" if hint else
                                                       f" (allowed here: {', '.join(sorted(names))})"), key)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, value, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _check_type(value, tp, prefix + f.name)
    return cls(**kwargs)             # its __post_init__ checks raise RecipeValueError with their key


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
    """Read and validate a recipe; `overrides` ({"optim.lr": 1e-4}) are applied first."""
    path = recipe_path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"not valid YAML: {getattr(exc, 'problem', exc)}", path=str(path),
                        line=mark.line + 1 if mark else None) from None
    return recipe_from_dict(apply_overrides(data, overrides), where=str(path), lines=key_lines(text))


def apply_overrides(data: dict, overrides: dict | None) -> dict:
    """Set dotted keys ({"optim.lr": 1e-4}) in a recipe's raw mapping, in place; returns it."""
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def key_lines(text: str) -> dict[str, int]:
    """1-based line of every dotted key in a YAML mapping."""
    out: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                out[key] = k.start_mark.line + 1
                walk(v, key + ".")
    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return out


def recipe_from_dict(data: dict, where: str = "<recipe>", lines: dict[str, int] | None = None) -> Recipe:
    try:
        return from_dict(Recipe, data)
    except RecipeValueError as exc:
        raise UserError(str(exc), path=where, line=(lines or {}).get(exc.key or ""), key=exc.key) from None

