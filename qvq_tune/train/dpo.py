"""Objective dpo: direct preference optimisation on image data with TRL's DPOTrainer (QLoRA / LoRA).

Reads preference pairs (`data/kinds.py`: prompt ids with the image placeholders
expanded, chosen and rejected reply ids, the prompt's media); its recipe section is
`dpo`. The reference is always the starting policy, never a second copy of the base
weights: starting from an SFT adapter (`dpo.start_adapter`, loaded as trainable by the
shared flow), TRL keeps a frozen copy of that adapter as the reference; starting from
the base, the reference is the base with the new adapter disabled. Images rule out TRL's
precomputed reference log-probs (it refuses them for vision datasets), so the reference
runs each step. Labels cover the replies only (`completion_mask`); each pair's chosen and
rejected rows share the prompt's images.
"""

from __future__ import annotations

from ..data.collate import VisionPreferenceCollator
from ..data.kinds import PREFERENCE
from .callbacks import ChosenLogpWatch
from ..recipe import Recipe
from .model_setup import adamw
from .objectives import Objective, Setup
from .trainer_args import common_args, pixel_cache


def dpo_config(recipe: Recipe, run):
    from trl import DPOConfig
    d = recipe.dpo
    losses, weights = [d.loss_type], [1.0]
    if d.sft_weight:
        losses, weights = losses + ["sft"], weights + [d.sft_weight]
    return DPOConfig(**common_args(recipe, run), beta=d.beta, loss_type=losses, loss_weights=weights,
                     max_length=None, precompute_ref_log_probs=False)


def trainer(setup: Setup):
    from trl import DPOTrainer

    recipe, processor = setup.recipe, setup.processor
    args = dpo_config(recipe, setup.run)
    collator = VisionPreferenceCollator(
        processor, **pixel_cache(recipe, len(setup.train), args.world_size, processor.image_processor))
    trainer = DPOTrainer(model=setup.model, ref_model=None, args=args, train_dataset=setup.train,
                         eval_dataset=setup.eval, data_collator=collator, processing_class=processor,
                         optimizers=(adamw(setup.model, recipe, setup.family), None))
    return trainer, (ChosenLogpWatch(recipe.dpo.chosen_logp_drop_warning),)


OBJECTIVE = Objective(
    name="dpo", reads=PREFERENCE, trainer=trainer,
    report_keys=("rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"),
    plot_keys=("rewards/margins", "logps/chosen", "logps/rejected"),
    doc="direct preference optimisation on chosen / rejected replies, reference = the starting policy")
