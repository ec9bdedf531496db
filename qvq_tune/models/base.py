"""The embedded default: a tiny Qwen2-VL pre-trained here until it reads images.

`ensure_tiny_base()` returns the cached folder (`~/.cache/qvq-tune/tiny-qvq-base-<hash>`),
building it when missing: a random tiny qwen2_vl from the zoo (QVQ chat template and
system prompt), trained from scratch on synthetic captions (colour, shape, count) with a
plain PyTorch loop, then checked on held-out and blank images. The folder name hashes
the recipe, so a changed recipe builds a new base; the same recipe rebuilds the same
weights (seeded data, seeded init, single process).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..paths import atomic_dir, cache_dir, write_json_atomic
from .zoo import TinySpec

BASE_NAME = "tiny-qvq-base"
REPORT_FILE = "pretrain_report.json"


@dataclass(frozen=True)
class BaseRecipe:
    steps: int = 700
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    clip: float = 1.0
    seed: int = 0
    eval_per_kind: int = 150
    spec: TinySpec = field(default_factory=TinySpec)

    def fingerprint(self) -> str:
        """Hash of everything the base depends on: this recipe, the tokenizer corpus and the
        chat template (a changed task vocabulary re-learns the merges, so a new base)."""
        from ..synth.vocabulary import tokenizer_corpus
        from .zoo import chat_template_text
        blob = json.dumps({"version": 1, **asdict(self), "corpus": tokenizer_corpus(),
                           "template": chat_template_text("qvq.jinja")}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def base_dir(recipe: BaseRecipe | None = None) -> Path:
    recipe = recipe or BaseRecipe()
    return cache_dir() / f"{BASE_NAME}-{recipe.fingerprint()}"


def ensure_tiny_base(recipe: BaseRecipe | None = None, *, progress: bool = True, log=print) -> Path:
    recipe = recipe or BaseRecipe()
    out = base_dir(recipe)
    if (out / REPORT_FILE).is_file() and (out / "config.json").is_file():
        return out
    log(f"building the tiny base model (once, cached at {out})")
    with atomic_dir(out) as tmp:
        pretrain(recipe, tmp, progress=progress, log=log)
    return out


def _samples(renderer, grid_of, rng: random.Random, n: int, kind: str | None = None, blank=False):
    from ..data.render import ResolvedMedia
    from ..synth.captions import caption_example
    from ..synth.scenes import draw

    out = []
    for _ in range(n):
        scene, k, conv = caption_example(rng, kind)
        img = draw(None if blank else scene)
        grid, ntok = grid_of(img.height, img.width)
        media = [ResolvedMedia("image", "<memory>", grid, ntok)]
        sample = renderer.render(conv, media)
        sample["images"] = [img]
        sample["prompt"] = renderer.render_prompt(conv.turns[:1], media)
        sample["prompt"]["images"] = [img]
        sample["answer"], sample["kind"] = conv.turns[1].text, k
        out.append(sample)
    return out


def pretrain(recipe: BaseRecipe, out: Path, *, progress: bool = True, log=print) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..data.render import RenderOptions, SampleRenderer
    from ..data.vision import image_grid
    from ..eval.answers import answers_match
    from ..eval.generate import generate_replies
    from ..train.collators import VisionSFTCollator
    from .registry import get_family
    from .zoo import build_tiny

    t0 = time.time()
    spec = recipe.spec if recipe.spec.chat_template else TinySpec(**{**asdict(recipe.spec), "chat_template": "qvq.jinja"})
    build_tiny("qwen2_vl", out, spec=spec, seed=recipe.seed, checkpoint=f"qvq-tune/{BASE_NAME}")
    processor = AutoProcessor.from_pretrained(str(out))
    model = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32)
    renderer = SampleRenderer(processor, get_family("qwen2_vl"), RenderOptions(reasoning="answer-only"))
    grid_of = lambda h, w: image_grid(processor.image_processor, h, w)  # noqa: E731
    collate = VisionSFTCollator(processor)

    torch.manual_seed(recipe.seed)
    rng = random.Random(f"{recipe.seed}:pretrain")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=recipe.betas)

    def lr_at(step: int) -> float:
        if step < recipe.warmup_steps:
            return recipe.lr * (step + 1) / recipe.warmup_steps
        frac = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        floor = recipe.min_lr_ratio
        return recipe.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))

    model.train()
    losses = []
    bar = tqdm(range(recipe.steps), desc="pre-train tiny base", disable=not progress)
    for step in bar:
        batch = collate(_samples(renderer, grid_of, rng, recipe.batch_size))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        opt.step()
        losses.append(round(loss.item(), 5))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.time() - t0

    # Held-out check (a different seed stream), then the same questions on blank images.
    accuracy = {}
    for blank in (False, True):
        erng = random.Random(f"{recipe.seed}:eval")
        for kind in ("colour", "shape", "count"):
            samples = _samples(renderer, grid_of, erng, recipe.eval_per_kind, kind, blank=blank)
            replies = generate_replies(model, processor, [s["prompt"] for s in samples],
                                       max_new_tokens=8, batch_size=64, progress=False)
            acc = sum(answers_match(r, s["answer"]) for r, s in zip(replies, samples)) / len(samples)
            accuracy[("blank_" if blank else "") + kind] = round(acc, 4)
    model.save_pretrained(out)
    report = {"name": BASE_NAME, "recipe": asdict(recipe), "fingerprint": recipe.fingerprint(),
              "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t0, 1),
              "loss_first": losses[0], "loss_last": sum(losses[-20:]) / len(losses[-20:]),
              "accuracy": accuracy, "losses": losses}
    write_json_atomic(out / REPORT_FILE, report)
    log(f"tiny base: held-out accuracy {accuracy} in {report['total_seconds']} s")
    return report
