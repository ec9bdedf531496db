"""Batched generation over prompt samples (left-padded, as generation needs).

Greedy by default; with `samples > 1` each prompt gets that many sampled replies
(`temperature`, seeded). Each reply comes back with its length in tokens and whether it
ran into the budget (no end-of-turn token was generated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..data.collate import VisionCollator
from ..models.loading import reset_rope_cache


@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int        # generated tokens, end-of-turn token included, padding not
    hit_budget: bool       # stopped by max_new_tokens, not by an end-of-turn token
    ids: tuple[int, ...] = ()   # the generated token ids (end-of-turn token included)


@torch.no_grad()
def generate_replies(model, processor, prompts: list[dict], *, max_new_tokens: int = 96,
                     batch_size: int = 32, samples: int = 1, temperature: float = 0.0, seed: int = 0,
                     progress: bool = True, desc: str = "generate") -> list[Generation]:
    """`samples` replies per prompt, prompt-major (collator inputs: input_ids + media)."""
    collate = VisionCollator(processor, padding_side="left")
    tok = processor.tokenizer
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, (list, tuple)) else [eos])
    sampling = {"do_sample": True, "temperature": temperature, "num_return_sequences": samples} \
        if temperature > 0 else {"do_sample": False}
    if temperature > 0:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out: list[Generation] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        batch = collate(prompts[start:start + batch_size])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                   pad_token_id=tok.pad_token_id, **sampling)
        reset_rope_cache(model)
        for row in generated[:, batch["input_ids"].shape[1]:].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in stops), None)
            kept = row if end is None else row[:end]
            out.append(Generation(tok.decode(kept, skip_special_tokens=True), len(kept), end is None, tuple(kept)))
    model.train(was_training)
    return out
