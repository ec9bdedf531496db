"""Batched generation over rendered prompts (left-padded, as generation needs): greedy, or
sampled (`samples` replies per prompt at a temperature, seeded)."""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..data.collate import VisionCollator
from ..models.loading import reset_rope_cache


@torch.no_grad()
def generate_replies(model, processor, prompts: list[dict], *, max_new_tokens: int = 96,
                     batch_size: int = 32, progress: bool = True, desc: str = "generate",
                     samples: int = 1, temperature: float | None = None, seed: int = 0) -> list[str]:
    """Replies for prompt samples (`SampleRenderer.render_prompt` output). Greedy when
    `temperature` is None; else `samples` sampled replies per prompt, prompt by prompt
    (reply j of prompt i at index i * samples + j), reproducible from `seed`."""
    collate = VisionCollator(processor, padding_side="left")
    tok = processor.tokenizer
    eos = model.generation_config.eos_token_id
    sampling = temperature is not None
    if sampling:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    replies: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = prompts[start:start + batch_size]
        batch = collate(chunk)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        extra = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0,
                  "num_return_sequences": samples} if sampling else {"do_sample": False})
        out = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=eos,
                             pad_token_id=tok.pad_token_id, **extra)
        reset_rope_cache(model)
        new = out[:, batch["input_ids"].shape[1]:]
        replies.extend(tok.batch_decode(new, skip_special_tokens=True))
    model.train(was_training)
    return replies
