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

from ..data.dataset import load_samples, processor_settings
from ..data.reasoning import split_reply
from ..data.render import IGNORE_INDEX
from ..models.detect import detect
from ..models.loading import set_pixel_limits
from ..models.registry import ModelFamily, get_family
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
    samples: int = 1                     # replies per prompt
    temperature: float | None = None     # None: greedy; else sampled at this temperature
    seed: int = 0                        # for sampled replies


@dataclass
class EvalModel:
    """A model ready to generate: weights (+ adapter), its processor and its family."""
    model: object
    processor: object
    family: ModelFamily


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


def load_for_eval(model_dir: str | Path, adapter: str | Path | None, opts: EvalOptions) -> EvalModel:
    from ..models.loading import load_model, load_processor
    family = get_family(detect(model_dir).family)
    processor = load_processor(model_dir)
    model = load_model(model_dir, dtype=opts.dtype, load_in_4bit=opts.load_in_4bit)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return EvalModel(model, processor, family)


def score(em: EvalModel, dataset_dir: str | Path, opts: EvalOptions, *, desc: str = "eval") -> list[dict]:
    """One row per sample: id, reference, reply, extracted answer, correct."""
    processor = em.processor
    set_pixel_limits(processor, **processor_settings(dataset_dir))   # as the samples were built
    ds = load_samples(dataset_dir)
    n = len(ds) if opts.limit is None else min(opts.limit, len(ds))
    prompts, refs, ids = [], [], []
    for i in range(n):
        sample = ds[i]
        prompt, ref = prompt_and_reference(sample, processor.tokenizer, em.family.turn_end)
        if opts.blank_images:
            prompt["images"] = [_blank(p) for p in prompt["images"]]
        prompts.append(prompt)
        refs.append(ref)
        ids.append(sample.get("id"))
    replies = generate_replies(em.model, processor, prompts, max_new_tokens=opts.max_new_tokens,
                               batch_size=opts.batch_size, desc=desc, samples=opts.samples,
                               temperature=opts.temperature, seed=opts.seed)
    per = opts.samples if opts.temperature is not None else 1
    rows = []
    for k, reply in enumerate(replies):
        i = k // per
        pred = extract_answer(reply)
        row = {"index": i, "id": ids[i], "reference": refs[i], "predicted": pred,
               "correct": answers_match(pred, refs[i]), "reply": reply}
        if per > 1:
            row["sample"] = k % per
        rows.append(row)
    return rows


def summarize(rows: list[dict], opts: EvalOptions) -> dict:
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
            "blank_images": opts.blank_images,
            "mean_reply_chars": sum(len(r["reply"]) for r in rows) / n if n else 0.0}


def evaluate(em: EvalModel, dataset_dir: str | Path, opts: EvalOptions, *,
             out_jsonl: str | Path | None = None, desc: str = "eval") -> dict:
    """Score a built dataset; write the rows (and a `.summary.json`) when `out_jsonl` is given."""
    rows = score(em, dataset_dir, opts, desc=desc)
    report = summarize(rows, opts)
    if out_jsonl:
        out_jsonl = Path(out_jsonl)
        out_jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(out_jsonl, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        write_json_atomic(out_jsonl.with_suffix(".summary.json"), report)
    return report
