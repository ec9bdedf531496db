"""TRL's `SFTTrainer` with per-token loss weights, through its public `compute_loss` hook.

Samples whose replies carry a loss weight (LLaMA-Factory v1's `loss_weight`, ms-swift's
`loss_scale`; see `data/render.py`) reach the batch as a `loss_weights` tensor
(`data/collate.py`). `compute_loss` pops it and scales each token's negative
log-likelihood by its weight, keeping TRL's normalisation (the number of labelled tokens,
or `num_items_in_batch` across gradient accumulation and ranks): a token of weight 2
counts twice, and a reply of weight 0 is not labelled at all, so it adds nothing. A batch
without weights goes through TRL's `compute_loss` untouched, so unweighted runs give
exactly the loss they gave before weights existed.
"""

from __future__ import annotations

from trl import SFTTrainer


class WeightedSFTTrainer(SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("loss_weights", None)
        if weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.compute_loss_func is not None or self.label_smoother is not None:
            raise ValueError("per-token loss weights need TRL's own token loss; this run sets label smoothing "
                             "or a compute_loss_func")
        return super().compute_loss(_WeightedModel(model, weights), inputs, return_outputs, num_items_in_batch)


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
