"""The family registry: one `ModelFamily` record per Qwen VL architecture.

Everything family-specific lives here and nowhere else: the transformers classes, which
modules LoRA targets, which prefixes make up the vision tower and the merger (frozen in
QLoRA recipes, kept out of 4-bit), the chat template and its control tokens (turn,
vision and think markers), the added tokens in Qwen's id order, how the family writes
its reasoning, and what a tiny zoo checkpoint of it looks like. Code elsewhere reads
these fields and never branches on a family's name. Known public checkpoints are
`Checkpoint` records carrying their licence and default system prompt.

Adding a family: one `ModelFamily` record below, its chat template in `chat_templates/`
(pinned in SOURCES.md), and its name in the tests' `FAMILIES` list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Callable, Literal, get_args

from ..errors import UserError
from .license import LicenseId
from .tiny_shapes import TinySpec, qwen2_5_vl_vision_config, qwen2_vl_vision_config, qwen3_vl_vision_config

ReasoningStyle = Literal["qvq", "think", "answer-only"]
REASONING_STYLES: tuple[str, ...] = get_args(ReasoningStyle)

# The reasoning markers of Qwen's thinking models. Qwen3-VL has them as added tokens;
# for Qwen2-VL / Qwen2.5-VL (and QVQ, whose traces are free-form) they are plain text.
THINK_TOKENS: tuple[str, str] = ("<think>", "</think>")

# Qwen's tool-calling markers (Hermes style): a call's JSON between the first pair in the
# assistant turn, each result between the second pair in a user turn.
TOOL_CALL_TOKENS: tuple[str, str] = ("<tool_call>", "</tool_call>")
TOOL_RESPONSE_TOKENS: tuple[str, str] = ("<tool_response>", "</tool_response>")
TOOLS_TEMPLATE_QWEN2_5 = "qwen2_5_vl_tools.jinja"

# Added tokens in the order Qwen's vocabularies number them from <|endoftext|> (151643):
# (content, special). Tool / FIM / think tokens are ordinary added tokens in Qwen2.5 / Qwen3.
FIRST_ADDED_TOKEN_ID = 151643
QWEN2_VL_ADDED = tuple((t, True) for t in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"))
QWEN2_5_VL_ADDED = QWEN2_VL_ADDED + (
    (TOOL_CALL_TOKENS[0], False), (TOOL_CALL_TOKENS[1], False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False))
QWEN3_VL_ADDED = QWEN2_5_VL_ADDED + (
    (TOOL_RESPONSE_TOKENS[0], False), (TOOL_RESPONSE_TOKENS[1], False), (THINK_TOKENS[0], False), (THINK_TOKENS[1], False))

QVQ_SYSTEM_PROMPT = ("You are a helpful and harmless assistant. You are Qwen developed by Alibaba. "
                     "You should think step-by-step.")
QWEN_SYSTEM_PROMPT = "You are a helpful assistant."

# The attention and MLP projections of the Qwen2 / Qwen3 decoder layers.
DENSE_LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# MoE layers keep their experts as fused 3-D parameters (not nn.Linear): attention only.
MOE_LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")

# The prefixes one weight is found under across transformers versions, as (module tree, older
# layout) pairs: transformers >= 4.52 nests the decoder as `model.language_model.*` and the
# tower as `model.visual.*`, while checkpoints saved before (and the tiny qwen2_vl /
# qwen2_5_vl saved by transformers 5, which converts back on save) use `model.*` and
# `visual.*`; LLaVA-style exports use `language_model.*`. Adapter keys follow whichever
# module tree trained them. Export matches names through these in both directions.
WEIGHT_PREFIX_ALIASES: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "model."), ("model.language_model.", "language_model.model."),
    ("model.language_model.", "language_model."), ("model.visual.", "visual."),
    ("lm_head.", "language_model.lm_head."))


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]            # config.json "model_type" values
    model_class: str                        # transformers class for image-text-to-text
    processor_class: str
    image_processor_class: str
    video_processor_class: str
    lora_targets: tuple[str, ...]           # leaf module names inside the language model
    language_model_prefix: str              # module path of the decoder
    vision_prefixes: tuple[str, ...]        # vision tower (frozen by default)
    merger_prefixes: tuple[str, ...]        # vision -> language projection(s)
    vision_tower_prefix: str                # the vision tower's root module (holds blocks and merger)
    vision_lora_pattern: str                # its blocks' Linear layers, as a regex below the root
    merger_lora_pattern: str                # the merger's Linear layers, likewise
    chat_template: str                      # file in models/chat_templates/
    default_system_prompt: str | None       # what the template inserts when none is given
    reasoning_style: ReasoningStyle         # how the family's reasoning models write traces
    patch_size: int
    added_tokens: tuple[tuple[str, bool], ...]  # (content, special) in Qwen's id order
    tiny_vision_config: Callable[[TinySpec, "ModelFamily"], dict]  # the tiny zoo's vision config
    merge_size: int = 2
    temporal_patch_size: int = 2
    mrope_interleaved: bool = False         # Qwen3-VL interleaves the t/h/w rotary sections
    image_token: str = "<|image_pad|>"
    video_token: str = "<|video_pad|>"
    vision_start: str = "<|vision_start|>"
    vision_end: str = "<|vision_end|>"
    turn_start: str = "<|im_start|>"
    turn_end: str = "<|im_end|>"            # also the end-of-sequence token of chat replies
    text_end: str = "<|endoftext|>"         # the padding token
    think_tokens: tuple[str, str] = THINK_TOKENS
    # Tool calling: None when `chat_template` renders tools itself (`tools=` into the system
    # block, calls in the assistant turn, results in a user turn); else the template used for
    # conversations with tools (Qwen2-VL / Qwen2.5-VL: their text models' format, same markers).
    tool_chat_template: str | None = None
    tool_call_tokens: tuple[str, str] = TOOL_CALL_TOKENS
    tool_response_tokens: tuple[str, str] = TOOL_RESPONSE_TOKENS
    is_moe: bool = False
    liger_patch: str | None = None          # liger_kernel.transformers function patching this family
    weight_prefix_aliases: tuple[tuple[str, str], ...] = WEIGHT_PREFIX_ALIASES

    @property
    def pixel_factor(self) -> int:
        """Image sides are rounded to multiples of this (patch x merge)."""
        return self.patch_size * self.merge_size

    @property
    def assistant_header(self) -> str:
        """What the chat template writes before each assistant reply."""
        return f"{self.turn_start}assistant\n"

    @property
    def video_placeholder(self) -> str:
        """What the chat template writes for a video part (the processor expands it)."""
        return self.vision_start + self.video_token + self.vision_end

    @property
    def control_tokens(self) -> tuple[str, ...]:
        """Chat-control tokens that user text must never contain (the template's own)."""
        return (self.image_token, self.video_token, self.vision_start, self.vision_end,
                self.turn_start, self.turn_end, self.text_end)

    @property
    def quant_skip_modules(self) -> tuple[str, ...]:
        """Modules kept out of 4-bit: the output head, the vision tower and the merger.
        Full module paths, which transformers matches from the start of a module's name."""
        return ("lm_head", *self.vision_prefixes, *self.merger_prefixes)

    def chat_template_text(self) -> str:
        return chat_template_text(self.chat_template)

    def tool_template_text(self) -> str | None:
        """The template for conversations with tools, when it is not the family's own."""
        return chat_template_text(self.tool_chat_template) if self.tool_chat_template else None

    @property
    def tool_format(self) -> str:
        """How this family renders tools, in words (`qvq-tune models detect`)."""
        call, result = self.tool_call_tokens[0], self.tool_response_tokens[0]
        if self.tool_chat_template is None:
            return (f"native: its chat template writes tools= into the system block, {call} JSON in the "
                    f"assistant turn, {result} in a user turn")
        return (f"its chat template has no tool section; qvq-tune uses its text models' format "
                f"({self.tool_chat_template}: tools in the system block, {call} JSON in the assistant "
                f"turn, {result} in a user turn)")

    def to_dict(self) -> dict:
        """JSON-ready fields (the tiny-config builder by its name)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["tiny_vision_config"] = self.tiny_vision_config.__name__
        return out

    def lora_target_regex(self, lm_targets: list[str] | str | None = None, *, vision: bool = False,
                          merger: bool = False) -> str:
        """A PEFT `target_modules` regex: the language model's projections (`lm_targets`: leaf
        names, or a regex used as given; default the family's), optionally every Linear of
        the vision tower's blocks and of the merger."""
        if isinstance(lm_targets, str):
            lm = lm_targets.removeprefix("^").removesuffix("$")
        else:
            names = "|".join(map(re.escape, lm_targets or self.lora_targets))
            lm = rf"{_re(self.language_model_prefix)}\.layers\.\d+\.(self_attn|mlp)\.({names})"
        tower = [p for p, on in ((self.vision_lora_pattern, vision), (self.merger_lora_pattern, merger)) if on]
        if not tower:
            return rf"^{lm}$"
        return rf"^(({lm})|{_re(self.vision_tower_prefix)}\.({'|'.join(tower)}))$"

    def part_of(self, name: str) -> str:
        """"vision", "merger" or "language_model" for a parameter or module name (PEFT's
        `base_model.model.` wrapper prefix allowed)."""
        name = name.removeprefix("base_model.model.")
        if name.startswith(self.merger_prefixes):
            return "merger"
        if name.startswith(self.vision_tower_prefix + "."):
            return "vision"
        return "language_model"


def _re(prefix: str) -> str:
    return prefix.replace(".", r"\.")


@dataclass(frozen=True)
class Checkpoint:
    """A public checkpoint, so detection can name it and export can gate on its licence."""
    repo_id: str
    family: str
    license: LicenseId
    reasoning_style: ReasoningStyle
    system_prompt: str | None = QWEN_SYSTEM_PROMPT
    aliases: tuple[str, ...] = field(default_factory=tuple)


FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (
    ModelFamily(
        name="qwen2_vl", model_types=("qwen2_vl",),
        model_class="Qwen2VLForConditionalGeneration", processor_class="Qwen2VLProcessor",
        image_processor_class="Qwen2VLImageProcessor", video_processor_class="Qwen2VLVideoProcessor",
        lora_targets=DENSE_LM_PROJECTIONS, language_model_prefix="model.language_model",
        vision_prefixes=("model.visual.patch_embed", "model.visual.blocks"),
        merger_prefixes=("model.visual.merger",),
        vision_tower_prefix="model.visual",
        vision_lora_pattern=r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))", merger_lora_pattern=r"merger\.mlp\.[02]",
        chat_template="qwen2_vl.jinja", default_system_prompt=QWEN_SYSTEM_PROMPT,
        tool_chat_template=TOOLS_TEMPLATE_QWEN2_5,
        reasoning_style="qvq", patch_size=14,
        added_tokens=QWEN2_VL_ADDED, tiny_vision_config=qwen2_vl_vision_config,
        liger_patch="apply_liger_kernel_to_qwen2_vl",
    ),
    ModelFamily(
        name="qwen2_5_vl", model_types=("qwen2_5_vl",),
        model_class="Qwen2_5_VLForConditionalGeneration", processor_class="Qwen2_5_VLProcessor",
        image_processor_class="Qwen2VLImageProcessor", video_processor_class="Qwen2VLVideoProcessor",
        lora_targets=DENSE_LM_PROJECTIONS, language_model_prefix="model.language_model",
        vision_prefixes=("model.visual.patch_embed", "model.visual.blocks"),
        merger_prefixes=("model.visual.merger",),
        vision_tower_prefix="model.visual",
        vision_lora_pattern=r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate_proj|up_proj|down_proj))",
        merger_lora_pattern=r"merger\.mlp\.[02]",
        chat_template="qwen2_5_vl.jinja", default_system_prompt=QWEN_SYSTEM_PROMPT,
        tool_chat_template=TOOLS_TEMPLATE_QWEN2_5,
        reasoning_style="qvq", patch_size=14,
        added_tokens=QWEN2_5_VL_ADDED, tiny_vision_config=qwen2_5_vl_vision_config,
        liger_patch="apply_liger_kernel_to_qwen2_5_vl",
    ),
    ModelFamily(
        name="qwen3_vl", model_types=("qwen3_vl",),
        model_class="Qwen3VLForConditionalGeneration", processor_class="Qwen3VLProcessor",
        image_processor_class="Qwen2VLImageProcessor", video_processor_class="Qwen3VLVideoProcessor",
        lora_targets=DENSE_LM_PROJECTIONS, language_model_prefix="model.language_model",
        vision_prefixes=("model.visual.patch_embed", "model.visual.pos_embed", "model.visual.blocks"),
        merger_prefixes=("model.visual.merger", "model.visual.deepstack_merger_list"),
        vision_tower_prefix="model.visual",
        vision_lora_pattern=r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.linear_fc[12])",
        merger_lora_pattern=r"(merger|deepstack_merger_list\.\d+)\.linear_fc[12]",
        chat_template="qwen3_vl_thinking.jinja", default_system_prompt=None,
        reasoning_style="think", patch_size=16, mrope_interleaved=True,
        added_tokens=QWEN3_VL_ADDED, tiny_vision_config=qwen3_vl_vision_config,
        liger_patch="apply_liger_kernel_to_qwen3_vl",
    ),
    ModelFamily(
        name="qwen3_vl_moe", model_types=("qwen3_vl_moe",),
        model_class="Qwen3VLMoeForConditionalGeneration", processor_class="Qwen3VLProcessor",
        image_processor_class="Qwen2VLImageProcessor", video_processor_class="Qwen3VLVideoProcessor",
        lora_targets=MOE_LM_PROJECTIONS, language_model_prefix="model.language_model",
        vision_prefixes=("model.visual.patch_embed", "model.visual.pos_embed", "model.visual.blocks"),
        merger_prefixes=("model.visual.merger", "model.visual.deepstack_merger_list"),
        vision_tower_prefix="model.visual",
        vision_lora_pattern=r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.linear_fc[12])",
        merger_lora_pattern=r"(merger|deepstack_merger_list\.\d+)\.linear_fc[12]",
        chat_template="qwen3_vl_thinking.jinja", default_system_prompt=None,
        reasoning_style="think", patch_size=16, mrope_interleaved=True, is_moe=True,
        added_tokens=QWEN3_VL_ADDED, tiny_vision_config=qwen3_vl_vision_config,
        liger_patch="apply_liger_kernel_to_qwen3_vl_moe",
    ),
)}


def _ckpt(repo_id, family, license, style="answer-only", system=QWEN_SYSTEM_PROMPT):
    return Checkpoint(repo_id=repo_id, family=family, license=license, reasoning_style=style,
                      system_prompt=system)


CHECKPOINTS: dict[str, Checkpoint] = {c.repo_id: c for c in (
    _ckpt("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", "apache-2.0"),
    _ckpt("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl", "apache-2.0"),
    _ckpt("Qwen/Qwen2-VL-72B-Instruct", "qwen2_vl", "qwen"),
    _ckpt("Qwen/QVQ-72B-Preview", "qwen2_vl", "qwen", "qvq", QVQ_SYSTEM_PROMPT),
    _ckpt("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", "qwen-research"),
    _ckpt("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "apache-2.0"),
    _ckpt("Qwen/Qwen2.5-VL-32B-Instruct", "qwen2_5_vl", "apache-2.0"),
    _ckpt("Qwen/Qwen2.5-VL-72B-Instruct", "qwen2_5_vl", "qwen"),
    *(_ckpt(f"Qwen/Qwen3-VL-{size}-{kind}", "qwen3_vl", "apache-2.0",
            "think" if kind == "Thinking" else "answer-only", None)
      for size in ("2B", "4B", "8B", "32B") for kind in ("Instruct", "Thinking")),
    *(_ckpt(f"Qwen/Qwen3-VL-{size}-{kind}", "qwen3_vl_moe", "apache-2.0",
            "think" if kind == "Thinking" else "answer-only", None)
      for size in ("30B-A3B", "235B-A22B") for kind in ("Instruct", "Thinking")),
)}


def supported_names() -> list[str]:
    return sorted(FAMILIES)


def get_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(f"unknown model family {name!r}; supported: {', '.join(supported_names())}",
                        key="family") from None


def family_for_model_type(model_type: str) -> ModelFamily | None:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    return None


def chat_template_text(name: str) -> str:
    """A shipped chat template (`models/chat_templates/NAME`), pinned by hash in SOURCES.md."""
    return resources.files(__package__).joinpath("chat_templates", name).read_text(encoding="utf-8")
