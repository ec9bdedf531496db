"""Evaluate a model (optionally with a LoRA adapter) on a built dataset by generation.

Prompts are cut from the built samples themselves (everything before the last
assistant reply) and references are decoded from their labels, so evaluation reads
exactly what the data stage recorded. `blank_images=True` replaces every image with a
white one of the same size: a model that really reads the image should drop to chance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..data.dataset import load_samples
from ..data.reasoning import split_reply
from ..data.render import IGNORE_INDEX
from ..paths import write_json_atomic
from .answers import answers_match, extract_answer
from .generate import generate_replies


@dataclass
class EvalOptions:
    max_new_tokens: int = 96
    batch_size: int = 32
    limit: int | None = None
    blank_images: bool = False
    load_in_4bit: bool = False
    dtype: str = "float32"


def prompt_and_reference(sample: dict, tokenizer, turn_end: str) -> tuple[dict, str]:
    labels, ids = sample["labels"], sample["input_ids"]
    last = max(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
    start = last
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    reply = tokenizer.decode(ids[start:last + 1], skip_special_tokens=False)
    reply = reply.removesuffix(turn_end)
    _, answer = split_reply(reply)
    prompt = {"input_ids": ids[:start], "images": list(sample.get("images") or []),
              "image_grid_thw": sample.get("image_grid_thw") or []}
    return prompt, answer


def _blank(path: str) -> Image.Image:
    with Image.open(path) as img:
        size = img.size
    return Image.new("RGB", size, (255, 255, 255))


def load_for_eval(model_dir: str, adapter: str | None, opts: EvalOptions):
    from ..models.loading import load_model, load_processor
    processor = load_processor(model_dir)
    model = load_model(model_dir, dtype=opts.dtype, load_in_4bit=opts.load_in_4bit)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, processor


def evaluate(model, processor, dataset_dir: str, opts: EvalOptions, *, family_turn_end: str = "<|im_end|>",
             out_jsonl: str | Path | None = None, desc: str = "eval") -> dict:
    ds = load_samples(dataset_dir)
    n = len(ds) if opts.limit is None else min(opts.limit, len(ds))
    prompts, refs = [], []
    for i in range(n):
        prompt, ref = prompt_and_reference(ds[i], processor.tokenizer, family_turn_end)
        if opts.blank_images:
            prompt["images"] = [_blank(p) for p in prompt["images"]]
        prompts.append(prompt)
        refs.append(ref)
    replies = generate_replies(model, processor, prompts, max_new_tokens=opts.max_new_tokens,
                               batch_size=opts.batch_size, desc=desc)
    rows = []
    for i, (reply, ref) in enumerate(zip(replies, refs)):
        pred = extract_answer(reply)
        rows.append({"index": i, "reference": ref, "predicted": pred,
                     "correct": answers_match(pred, ref), "reply": reply})
    correct = sum(r["correct"] for r in rows)
    report = {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
              "blank_images": opts.blank_images,
              "mean_reply_chars": sum(len(r["reply"]) for r in rows) / n if n else 0.0}
    if out_jsonl:
        out_jsonl = Path(out_jsonl)
        out_jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(out_jsonl, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        write_json_atomic(out_jsonl.with_suffix(".summary.json"), report)
    return report
