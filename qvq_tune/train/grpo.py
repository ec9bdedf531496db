"""Objective grpo: group-relative policy optimisation on image questions with gold answers
(TRL's GRPOTrainer; LoRA / QLoRA; one process or ZeRO-3 across processes).

Reads sft samples (`data/kinds.py`): each becomes the prompt eval would give it
(`data/prompts.py`: everything before the last reply, plus the template's generation
prefix) with its images, and the reply's final answer as the gold. Each step samples
`grpo.num_generations` completions per prompt (`optim.per_device_batch_size` counts
completions, as in TRL), scores each with the recipe's rewards (`train/rewards.py`, the
eval's answer checker and diagnostics) and pushes the policy towards the better ones of
its group. Its recipe section is `grpo`; `grpo.start_adapter` starts from an SFT adapter.

What TRL needs changed for these models, and nothing more (`GroupTrainer`):
- prompts are the built token ids, not re-rendered by a chat template: each prompt is
  handed to TRL as the decoded prompt text (image placeholders collapsed back to one per
  image) under a pass-through chat template, which the processor re-expands to the same
  ids (checked once per run on the first prompt);
- the tokenizer pads on the left, so text ids, attention mask and the processor's
  `mm_token_type_ids` line up (TRL pads the ids left, the processor its own way);
- Qwen's cached rope deltas are cleared around generation, so the scoring forward after
  `generate()` computes its own positions.
Metrics (TRL's, into `metrics.jsonl`): per-reward means and spreads, the share of groups
with zero reward spread, completion length mean / max and the share that hit the budget,
KL when `grpo.beta > 0`; `GroupWatch` warns when lengths collapse or most groups carry
no signal.
"""

from __future__ import annotations

import copy
import sys

from transformers import TrainerCallback

from ..data.kinds import SFT
from ..data.prompts import generation_prefix, prompt_from_sample
from ..errors import UserError
from ..recipe import Recipe
from .model_setup import adamw
from .objectives import Objective, Setup
from .rewards import STYLES, BatchReward, ReplyContext, reward_function
from .trainer_args import common_args

# Renders a conversation's text parts as they are: the prompt text is already templated.
PASS_THROUGH_TEMPLATE = ("{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
                         "{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
                         "{% endfor %}{% endif %}{% endfor %}")


def reply_style(recipe: Recipe, family, build_settings: dict) -> str:
    """How replies should be written: the recipe's, else the build's `--reasoning`, else the family's."""
    if recipe.grpo.style != "auto":
        return recipe.grpo.style
    return build_settings.get("reasoning") or family.reasoning_style


def prompt_rows(samples, tokenizer, family, prefix: str) -> dict:
    """Columns TRL's GRPOTrainer takes: `prompt` (one user message holding the templated
    prompt text), `images` (paths), `answer` (gold) and `reference_reply`, `prompt_tokens`."""
    cols = {"prompt": [], "images": [], "answer": [], "reference_reply": [], "prompt_tokens": [], "id": []}
    for sample in samples:
        p = prompt_from_sample(sample, tokenizer, family, prefix)
        text = tokenizer.decode(p.batch["input_ids"], skip_special_tokens=False)
        cols["prompt"].append([{"role": "user", "content": collapse_placeholders(text, family)}])
        cols["images"].append(p.batch["images"])
        cols["answer"].append(p.reference)
        cols["reference_reply"].append(p.reference_reply)
        cols["prompt_tokens"].append(len(p.batch["input_ids"]))
        cols["id"].append(p.id)
    return cols


def collapse_placeholders(text: str, family) -> str:
    """One image / video token per placeholder, as the chat template writes it (the
    processor expands it again to the image's grid)."""
    import re
    for token in (family.image_token, family.video_token):
        text = re.sub(f"(?:{re.escape(token)})+", token.replace("\\", "\\\\"), text)
    return text


def prompts_dataset(samples, processor, family):
    from datasets import Dataset, Image, Sequence

    cols = prompt_rows(samples, processor.tokenizer, family, generation_prefix(processor, family))
    if any(sample.get("videos") for sample in samples):
        raise UserError("objective grpo takes image (or text-only) prompts; this build holds videos")
    ds = Dataset.from_dict(cols)
    return ds.cast_column("images", Sequence(Image())) if any(cols["images"]) else ds.remove_columns("images")


def trainer_processor(processor):
    """The processor TRL gets: a copy that pads on the left and renders prompts as they are."""
    tokenizer = copy.copy(processor.tokenizer)
    tokenizer.padding_side = "left"
    out = copy.copy(processor)
    out.tokenizer = tokenizer
    out.chat_template = PASS_THROUGH_TEMPLATE
    return out


def reset_rope_deltas(model) -> None:
    for module in model.modules():
        if getattr(module, "rope_deltas", None) is not None:
            module.rope_deltas = None


def grpo_trainer_class():
    from trl import GRPOTrainer

    class GroupTrainer(GRPOTrainer):
        """TRL's GRPOTrainer with Qwen's rope-delta cache cleared around generation."""

        def _generate(self, prompts):
            reset_rope_deltas(self.model)
            try:
                return super()._generate(prompts)
            finally:
                reset_rope_deltas(self.model)

    return GroupTrainer


def grpo_config(recipe: Recipe, run):
    from trl import GRPOConfig
    g = recipe.grpo
    args = common_args(recipe, run)
    args.update(metric_for_best_model="eval_reward", greater_is_better=True)
    return GRPOConfig(**args, num_generations=g.num_generations, max_completion_length=g.max_completion_tokens,
                      temperature=g.temperature, top_p=g.top_p, beta=g.beta, loss_type=g.loss_type,
                      scale_rewards=g.scale_rewards, reward_weights=g.reward_weights,
                      mask_truncated_completions=g.mask_truncated, use_vllm=g.use_vllm, vllm_mode=g.vllm_mode,
                      vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization, log_completions=False,
                      disable_dropout=True, shuffle_dataset=recipe.data.shuffle)


def trainer(setup: Setup):
    from ..data.dataset import build_report

    recipe, family = setup.recipe, setup.family
    g = recipe.grpo
    settings = (build_report(recipe.data.train) or {}).get("settings", {})
    ctx = ReplyContext(style=reply_style(recipe, family, settings), think=family.think_tokens,
                       budget=g.max_completion_tokens,
                       overlong_cache=g.overlong_cache or max(1, g.max_completion_tokens // 4))
    processor = trainer_processor(setup.processor)
    prefix = generation_prefix(setup.processor, family)
    train_ds = prompts_dataset(setup.train, setup.processor, family)
    eval_ds = prompts_dataset(setup.eval, setup.processor, family) if setup.eval is not None else None
    check_prompt_ids(train_ds, setup.train[0], processor, family, prefix)
    tok = setup.processor.tokenizer
    ends = tuple(i for i in (tok.eos_token_id, tok.convert_tokens_to_ids(family.turn_end)) if i is not None)
    rewards = [BatchReward(name, ctx, prefix, ends) for name in g.rewards]
    args = grpo_config(recipe, setup.run)
    trainer = grpo_trainer_class()(
        model=setup.model, reward_funcs=rewards, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=processor, optimizers=(adamw(setup.model, recipe, family), None))
    return trainer, (GroupWatch(g.zero_spread_warning, g.length_collapse_warning),)


def check_prompt_ids(ds, sample, processor, family, prefix: str) -> None:
    """The first prompt, as TRL will render and process it, gives the built token ids."""
    from PIL import Image

    row = ds[0]
    images = [img if hasattr(img, "size") else Image.open(img) for img in row.get("images") or []]
    text = processor.apply_chat_template([row["prompt"]], tokenize=False, add_generation_prompt=True)[0]
    ids = processor(text=[text], images=images or None, return_tensors=None)["input_ids"][0]
    expected = prompt_from_sample(sample, processor.tokenizer, family, prefix).batch["input_ids"]
    if list(ids) != list(expected):
        raise AssertionError(f"grpo prompt ids differ from the built sample's ({len(ids)} vs {len(expected)} tokens)")


class GroupWatch(TrainerCallback):
    """Warns once when most groups carry no learning signal (every completion scored alike)
    over three logs in a row, and once when completions collapse in length."""

    def __init__(self, zero_spread: float, collapse: float):
        self.zero_spread, self.collapse = zero_spread, collapse
        self.high, self.start_length, self.warned = 0, None, set()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if not state.is_world_process_zero:
            return
        share = logs.get("frac_reward_zero_std")
        if share is not None:
            self.high = self.high + 1 if share >= self.zero_spread else 0
            if self.high >= 3 and "spread" not in self.warned:
                self.warned.add("spread")
                self._warn(f"{share:.0%} of groups had no reward spread for 3 logs in a row (step "
                           f"{state.global_step}): no learning signal. Lower the temperature if every reply is "
                           "wrong and looping, or raise grpo.num_generations, or start from a stronger SFT adapter.")
        length = logs.get("completions/mean_length")
        if length is not None:
            self.start_length = self.start_length or length
            if length < self.collapse * self.start_length and "length" not in self.warned:
                self.warned.add("length")
                self._warn(f"the mean completion length fell from {self.start_length:.0f} to {length:.0f} tokens "
                           f"(step {state.global_step}): the policy may be collapsing to short answers without "
                           "reasoning. Weigh the format reward, lower optim.lr, or set grpo.beta > 0.")

    @staticmethod
    def _warn(message: str) -> None:
        print(f"qvq-tune: warning: {message}", file=sys.stderr, flush=True)


def checks(recipe: Recipe, family) -> list[tuple[str, str]]:
    problems = []
    for name in recipe.grpo.rewards:
        try:
            reward_function(name)
        except (KeyError, ImportError, AttributeError) as exc:
            problems.append(("grpo.rewards", f"{name}: {exc}"))
    if recipe.grpo.style not in ("auto", *STYLES):
        problems.append(("grpo.style", f"must be auto or one of {', '.join(STYLES)}"))
    return problems


OBJECTIVE = Objective(
    name="grpo", reads=SFT, trainer=trainer, checks=checks,
    report_keys=("reward", "reward_std", "rewards/", "frac_reward_zero_std", "completions/mean_length",
                 "completions/max_length", "completions/clipped_ratio", "kl"),
    plot_keys=("reward", "frac_reward_zero_std", "completions/clipped_ratio"),
    doc="group-relative policy optimisation: sampled replies scored by the eval's answer checker and diagnostics")
