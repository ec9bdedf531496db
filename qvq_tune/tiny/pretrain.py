"""The embedded default: a tiny Qwen2-VL pre-trained here until it reads images.

`ensure_tiny_base()` returns the cached folder (`$QVQ_TUNE_CACHE/tiny-qvq-base-<hash>`),
building it when missing, through the same stages a user's run takes:
1. a random tiny qwen2_vl from the zoo (QVQ chat template and system prompt);
2. synthetic caption questions (colour, shape, count, all three) written as native
   JSONL + PNGs (`synth/captions.py`) and built with `data build`;
3. full fine-tuning of every weight with the SFT trainer (`train.run.train`, in-process);
4. a held-out check with the evaluator (`eval.evaluate`), on the real images and on
   blank ones (a model that reads the image drops to chance there).
The folder name hashes the recipe, the tokenizer corpus, the template and this stage's
code, so a changed recipe builds a new base; the same recipe rebuilds the same weights
(seeded data, init and trainer; single process).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.build import BuildConfig, build
from ..data.training_data import dataset_summary
from ..eval.evaluate import EvalOptions, load_for_eval, score_dataset
from ..models.tiny_shapes import TinySpec
from ..paths import atomic_dir, cache_dir, write_json_atomic
from ..recipe import recipe_from_dict
from ..run_folder import ADAPTER_DIR, METRICS, RECIPE, TRAIN_REPORT
from ..synth.captions import write_captions
from ..synth.vocabulary import tokenizer_corpus
from ..train.run import train
from .zoo import QVQ_TEMPLATE, build_tiny

BASE_NAME = "tiny-qvq-base"
REPORT_FILE = "pretrain_report.json"
CAPTIONS_SUMMARY = "captions_summary.json"   # in pretrain/: the caption build's training-data summary
CHECKED_KINDS = ("colour", "shape", "count")
CHANCE = {"colour": 1 / 6, "shape": 1 / 3, "count": 1 / 4}


@dataclass(frozen=True)
class BaseRecipe:
    family: str = "qwen2_vl"
    steps: int = 700
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    adam_beta2: float = 0.98
    clip: float = 1.0
    seed: int = 0
    eval_per_kind: int = 150
    # QVQ's chat template and, like QVQ-72B-Preview, the Qwen LICENSE AGREEMENT: exporting a
    # fine-tune of the tiny base goes through the licence gate as exporting QVQ's does.
    spec: TinySpec = field(default_factory=lambda: TinySpec(chat_template=QVQ_TEMPLATE, license="qwen"))

    def fingerprint(self) -> str:
        """Hash of everything the base depends on: this recipe, the tokenizer corpus, the
        chat template and the code of this module and the zoo."""
        from ..models.registry import chat_template_text
        from . import zoo
        blob = json.dumps({"version": 2, **asdict(self), "corpus": tokenizer_corpus(),
                           "template": chat_template_text(self.spec.chat_template),
                           "code": [Path(f).read_text() for f in (zoo.__file__, __file__)]},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def training_recipe(self, model_dir: Path, data_dir: Path, runs: Path):
        """The SFT recipe that pre-trains the base: full fine-tuning of every weight."""
        return recipe_from_dict({
            "name": "pretrain", "model": str(model_dir), "method": "full", "dtype": "float32",
            "output_dir": str(runs), "data": {"train": str(data_dir)},
            "freeze": {"vision": False, "merger": False},   # full: every weight trains, vision tower included
            "optim": {"max_steps": self.steps, "per_device_batch_size": self.batch_size,
                      "lr": self.lr, "warmup_steps": self.warmup_steps, "scheduler": "cosine",
                      "min_lr_ratio": self.min_lr_ratio, "weight_decay": self.weight_decay,
                      "adam_beta2": self.adam_beta2, "max_grad_norm": self.clip, "seed": self.seed,
                      "logging_steps": 10},
            "launch": {"accelerate_config": "single", "num_processes": 1}})


def base_dir(recipe: BaseRecipe | None = None) -> Path:
    recipe = recipe or BaseRecipe()
    return cache_dir() / f"{BASE_NAME}-{recipe.fingerprint()}"


def ensure_tiny_base(recipe: BaseRecipe | None = None, *, log=print) -> Path:
    recipe = recipe or BaseRecipe()
    out = base_dir(recipe)
    if (out / REPORT_FILE).is_file() and (out / "config.json").is_file():
        return out
    log(f"building the tiny base model (once, cached at {out})")
    with atomic_dir(out) as tmp:
        pretrain(recipe, tmp, log=log)
    return out


def pretrain(recipe: BaseRecipe, out: Path, *, log=print) -> dict:
    """Build the base into `out` (an empty folder); returns its report."""
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".pretrain-") as work:
        work = Path(work)
        init = build_tiny(recipe.family, work / "init", spec=recipe.spec, seed=recipe.seed,
                          checkpoint=f"qvq-tune/{BASE_NAME}")
        captions = write_captions(work / "captions", recipe.steps * recipe.batch_size, f"{recipe.seed}:pretrain")
        build(BuildConfig(input=str(captions), model=str(init), out=str(work / "pretrain-captions"),
                          reasoning="answer-only", reuse=False))
        captions_summary = dataset_summary(work / "pretrain-captions", "train")   # the base's training-data record
        sft = recipe.training_recipe(init, work / "pretrain-captions", work / "runs")
        report = train(sft, in_process=True)
        trained = sft.run_dir / ADAPTER_DIR
        shutil.copytree(init, out, dirs_exist_ok=True)        # tokenizer, processor, identity
        for name in ("config.json", "model.safetensors", "generation_config.json"):
            if (trained / name).is_file():
                shutil.copy2(trained / name, out / name)
        (out / "pretrain").mkdir()
        for name in (RECIPE, METRICS, TRAIN_REPORT):
            shutil.copy2(sft.run_dir / name, out / "pretrain" / name)
        write_json_atomic(out / "pretrain" / CAPTIONS_SUMMARY, captions_summary)
        accuracy = caption_accuracy(out, recipe.eval_per_kind, f"{recipe.seed}:eval", work / "eval")
    result = {"name": BASE_NAME, "recipe": asdict(recipe), "fingerprint": recipe.fingerprint(),
              "train_seconds": report["wall_seconds"], "steps": report["steps"],
              "loss_first": report["train_loss_first"], "loss_last": report["train_loss_last"],
              "accuracy": accuracy}
    write_json_atomic(out / REPORT_FILE, result)
    log(f"tiny base: held-out accuracy {accuracy}")
    return result


def caption_accuracy(model_dir: Path, per_kind: int, seed: str, work: Path) -> dict[str, float]:
    """Held-out accuracy per question kind, on the real images and on blank ones
    (`blank_colour` etc.), measured by building fresh caption questions and scoring
    greedy replies with the evaluator."""
    questions = write_captions(work / "captions", per_kind, seed, kinds=CHECKED_KINDS)
    build(BuildConfig(input=str(questions), model=str(model_dir), out=str(work / "built"),
                      reasoning="answer-only", reuse=False))
    opts = EvalOptions(max_new_tokens=8, batch_size=64, dtype="float32", device="cpu")
    em = load_for_eval(model_dir, None, opts)
    accuracy = {}
    for blank in (False, True):
        hits = defaultdict(list)
        for row in score_dataset(em, work / "built", opts, blank=blank, desc="check tiny base"):
            hits[row["id"].split("-")[0]].append(row["correct"])
        for kind, values in hits.items():
            accuracy[("blank_" if blank else "") + kind] = round(sum(values) / len(values), 4)
    return accuracy
