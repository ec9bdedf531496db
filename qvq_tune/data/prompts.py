"""Built samples -> generation prompts and references (shared by eval and objective grpo).

A prompt is everything before a sample's last assistant reply, with its images and
videos, plus what the chat template itself writes after the assistant header when it
asks for a reply (Qwen3-VL Thinking opens the trace there with its think marker); the
reference is decoded from the reply's labels, so evaluation and training rewards read
what the data stage recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.registry import ModelFamily
from .reasoning import split_reply
from .render import IGNORE_INDEX


@dataclass
class Prompt:
    id: str | None
    batch: dict            # input_ids + media columns, as the collator takes them
    reference: str         # the reference final answer
    reference_reply: str   # the whole reference reply (trace included)
    prefix: str            # the template's generation prefix: reply text the prompt already holds


def generation_prefix(processor, family: ModelFamily) -> str:
    """What the chat template writes after the assistant header when asked for a reply."""
    chat = [{"role": "user", "content": [{"type": "text", "text": "?"}]}]
    text = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    head, header, prefix = text.rpartition(family.assistant_header)
    return prefix if header else ""


def prompt_from_sample(sample: dict, tokenizer, family: ModelFamily, prefix: str = "") -> Prompt:
    labels, ids = sample["labels"], sample["input_ids"]
    last = max(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
    start = last
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    reply = tokenizer.decode(ids[start:last + 1], skip_special_tokens=False).removesuffix(family.turn_end)
    _, answer = split_reply(reply, family.think_tokens)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    batch = {"input_ids": list(ids[:start]) + prefix_ids,      # as the template's generation prompt
             "images": list(sample.get("images") or []), "image_grid_thw": sample.get("image_grid_thw") or [],
             "videos": list(sample.get("videos") or [])}
    return Prompt(sample.get("id"), batch, answer, reply, prefix)
