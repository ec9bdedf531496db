"""Batched greedy generation over rendered prompts (left-padded, as generation needs)."""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..models.loading import reset_rope_cache
from ..data.collate import VisionCollator


@torch.no_grad()
def generate_replies(model, processor, prompts: list[dict], *, max_new_tokens: int = 96,
                     batch_size: int = 32, progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy replies for prompt samples (`SampleRenderer.render_prompt` output)."""
    collate = VisionCollator(processor, padding_side="left")
    tok = processor.tokenizer
    eos = model.generation_config.eos_token_id
    was_training = model.training
    model.eval()
    replies: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = prompts[start:start + batch_size]
        batch = collate(chunk)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=tok.pad_token_id)
        reset_rope_cache(model)
        new = out[:, batch["input_ids"].shape[1]:]
        replies.extend(tok.batch_decode(new, skip_special_tokens=True))
    model.train(was_training)
    return replies
