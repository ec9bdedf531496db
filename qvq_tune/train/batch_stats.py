"""What each training step actually computed: tokens, padding, samples.

A forward pre-hook on the model counts, for every forward that builds a graph (the
policy's; not a DPO reference pass or an evaluation), the real tokens (attention mask, or
every position of a packed row), the padded positions and the samples (a packed row's,
by its text positions restarting at 0, before or after `train/packing.py` made them 3-D).
`take()` returns the counts since the last call, summed over all ranks; the metrics
callback turns them into non-padding tokens/s, samples/s and the padding share.
"""

from __future__ import annotations

import torch


class BatchStats:
    def __init__(self):
        self.tokens = self.positions = self.samples = 0

    def before_model(self, module, args, kwargs):
        if not (module.training and torch.is_grad_enabled()):
            return
        ids = kwargs.get("input_ids")
        if ids is None:
            return
        mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        self.positions += ids.numel()
        if mask is not None and mask.ndim == 2:
            self.tokens += int(mask.sum())
            self.samples += ids.shape[0]
        else:                                  # a packed row: every position is a real token
            self.tokens += ids.numel()
            if pos is not None and pos.ndim == 3:  # (4, 1, L) once `train/packing.py` ran: text positions first
                pos = pos[0]
            self.samples += int((pos == 0).sum()) if pos is not None and pos.ndim == 2 else ids.shape[0]

    def attach(self, model) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.register_forward_pre_hook(self.before_model, with_kwargs=True)

    def take(self) -> dict[str, int]:
        """Counts since the last call, summed over ranks (every rank must call it together)."""
        counts = torch.tensor([self.tokens, self.positions, self.samples], dtype=torch.float64)
        self.tokens = self.positions = self.samples = 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend_device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
            counts = counts.to(backend_device)
            torch.distributed.all_reduce(counts)
        tokens, positions, samples = (int(x) for x in counts.tolist())
        return {"tokens": tokens, "positions": positions, "samples": samples}
