"""TRL's `SFTTrainer` with per-token loss weights and a loss over labelled positions only,
through its public `compute_loss` hook.

Samples whose replies carry a loss weight (LLaMA-Factory v1's `loss_weight`, ms-swift's
`loss_scale`; see `data/render.py`) reach the batch as a `loss_weights` tensor
(`data/collate.py`). `compute_loss` pops it and scales each token's negative
log-likelihood by its weight, keeping TRL's normalisation (the number of labelled tokens,
or `num_items_in_batch` across gradient accumulation and ranks): a token of weight 2
counts twice, and a reply of weight 0 is not labelled at all, so it adds nothing.

`loss.lm_head` picks how the head is read. "fused" is TRL's own path (its chunked LM head,
which off CUDA scores every position, plus its entropy and token-accuracy metrics, each
gathered across ranks every step); a batch without weights goes through it untouched.
"labelled" asks the model for logits only at the positions whose next token is labelled
(`logits_to_keep` as an index tensor: the prompt, image and padding positions are never
projected) and takes the same normalised negative log-likelihood; measured on the tiny
model on CPU it is the cheaper one (see the README's benchmark section).
"""

from __future__ import annotations

import torch
from trl import SFTTrainer

IGNORE_INDEX = -100


class WeightedSFTTrainer(SFTTrainer):
    def __init__(self, *args, lm_head: str = "fused", **kwargs):
        super().__init__(*args, **kwargs)
        self.lm_head = lm_head

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("loss_weights", None)
        if self.lm_head == "labelled" and not return_outputs and self.compute_loss_func is None \
                and self.label_smoother is None and self.args.loss_type == "nll":
            return self._labelled_loss(model, inputs, weights, num_items_in_batch)
        if weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.compute_loss_func is not None or self.label_smoother is not None:
            raise ValueError("per-token loss weights need TRL's own token loss; this run sets label smoothing "
                             "or a compute_loss_func")
        return super().compute_loss(_WeightedModel(model, weights), inputs, return_outputs, num_items_in_batch)

    def _labelled_loss(self, model, inputs, weights, num_items_in_batch):
        """Mean (or `num_items_in_batch`-normalised) weighted NLL of the labelled tokens, from logits
        at the positions that predict them only."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        predicting = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)   # positions, any row
        outputs = model(**inputs, use_cache=False, logits_to_keep=predicting)
        logits = outputs.logits.float()                                          # (B, K, V)
        kept = targets[:, predicting]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), kept.reshape(-1),
                                                ignore_index=IGNORE_INDEX, reduction="none").view_as(kept)
        if weights is not None:
            nll = nll * weights[:, 1:][:, predicting].to(nll)
        count = (kept != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
        loss = nll.sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes           # as TRL's compute_loss: DDP averages
        return loss


class _WeightedModel:
    """Calls the model; when TRL asks for its fused LM head (`fused_lm_head=True`), whose
    per-token `log_probs` are aligned with the next-token labels (`labels[:, 1:]`) and
    make up TRL's loss, scales them by those tokens' weights."""

    def __init__(self, model, weights):
        self.model, self.weights = model, weights

    def __call__(self, *args, **kwargs):
        outputs = self.model(*args, **kwargs)
        if kwargs.get("fused_lm_head"):
            outputs.log_probs = outputs.log_probs * self.weights[:, 1:].to(outputs.log_probs)
        return outputs
