"""Every shipped recipe and launcher preset loads; bad recipes fail before anything launches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qvq_tune.errors import UserError
from qvq_tune.recipe import load_recipe
from qvq_tune.train.launch import presets, resolve_accelerate_config, write_resolved_config

from .conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipe_loads_and_names_a_real_preset(path):
    import yaml
    recipe = load_recipe(path)
    resolve_accelerate_config(recipe.launch.accelerate_config)
    given, held = _flat(yaml.safe_load(path.read_text())), _flat(recipe.to_dict())
    assert {k: held.get(k, "<missing>") for k in given} == given, "every value the file sets is the recipe's"


def test_presets_cover_ddp_zero2_zero3_offload():
    assert {"single", "ddp", "zero2", "zero3", "zero3_offload"} <= set(presets())


def test_resolved_preset_runs_on_cpu(tmp_path):
    import torch
    out = yaml.safe_load(write_resolved_config("ddp", 2, tmp_path / "a.yaml").read_text())
    assert out["num_processes"] == 2
    if not torch.cuda.is_available():
        assert out["use_cpu"] is True and out["distributed_type"] == "MULTI_GPU"
    z3 = yaml.safe_load(write_resolved_config("zero3", 2, tmp_path / "b.yaml").read_text())
    assert z3["distributed_type"] == "DEEPSPEED"
    assert json.loads(Path(z3["deepspeed_config"]["deepspeed_config_file"]).read_text())["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize("body,needle", [
    ("optim: {max_stepz: 3}", "unknown key optim.max_stepz"),
    ("method: qlorax", "method must be one of"),
    ("optim: {lr: fast}", "optim.lr must be float"),
    ("optim: {max_steps: 0}", "optim.max_steps must be positive"),
    ("lora: [1, 2]", "lora. must be a mapping"),
    ("name: [oops", "not valid YAML"),
])
def test_bad_recipe_is_a_user_error_naming_file_and_key(tmp_path, body, needle):
    path = tmp_path / "r.yaml"
    path.write_text(body + "\n")
    with pytest.raises(UserError) as e:
        load_recipe(path)
    assert str(path) in str(e.value)
    assert needle.replace(".", "") in str(e.value).replace(".", "") or needle in str(e.value)


def test_unknown_launcher_preset():
    with pytest.raises(UserError, match="zero3"):
        resolve_accelerate_config("zero9")


REAL_MODEL_RECIPES = {"qvq72b_qlora_zero3": "qwen2_vl", "qwen25vl7b_lora_single": "qwen2_5_vl",
                      "qwen25vl72b_lora_zero3_offload": "qwen2_5_vl", "qwen25vl7b_dpo": "qwen2_5_vl"}


@pytest.fixture(scope="module")
def stand_in_data(tiny_model, tmp_path_factory):
    """family -> a small build (SFT samples and preference pairs) made with its tiny zoo model."""
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.synth.generate import SynthConfig, generate
    root = tmp_path_factory.mktemp("stand_in")
    generate(SynthConfig(train=4, validation=0, test=0, dpo=True), root / "raw", progress=False)
    out = {}
    for family in sorted(set(REAL_MODEL_RECIPES.values())):
        for split in ("train", "dpo_train"):
            build(BuildConfig(input=str(root / "raw" / f"{split}.jsonl"), model=str(tiny_model(family)),
                              out=str(root / family / split), workers=1))
        out[family] = root / family
    return out


@pytest.mark.parametrize("name", sorted(REAL_MODEL_RECIPES))
def test_real_model_recipes_pass_check(name, tiny_model, stand_in_data):
    """Each real-model recipe passes `--check` with its paths pointed at a stand-in of the same
    family (the real checkpoints are not here); the planned hardware is written beside it."""
    import json
    import subprocess
    import sys

    from qvq_tune import presets
    family = REAL_MODEL_RECIPES[name]
    recipe = load_recipe(name)
    data = stand_in_data[family] / ("dpo_train" if recipe.objective == "dpo" else "train")
    sets = {"model": tiny_model(family), "data.train": data, "data.eval": data if recipe.data.eval else None,
            "dpo.start_adapter": None}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={'null' if v is None else v}")]
    out = subprocess.run([sys.executable, "-m", "qvq_tune", "train", "--recipe", name, "--check", *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["name"] == recipe.name
    text = (presets.folder(presets.RECIPES) / f"{name}.yaml").read_text()
    assert "GB" in text.split("\nname:")[0], "the planned memory and hardware are written in the header"


# One recipe per check in the config dataclasses: the error names the key the check is
# about and the line that key is on, raised at the check (no key read back from the message).
BASE = "name: x\ndata:\n  train: d\n"          # lines 1-3
CHECKS = [
    ("lora:\n  r: 0", "lora.r", 5),
    ("lora:\n  targets: []", "lora.targets", 5),
    ("optim:\n  grad_accum: 0", "optim.grad_accum", 5),
    ("optim:\n  vision_lr: -1.0", "optim.vision_lr", 5),
    ("optim:\n  warmup_steps: -1", "optim.warmup_steps", 5),
    ("optim:\n  save_total_limit: 0", "optim.save_total_limit", 5),
    ("optim:\n  min_lr_ratio: 1.5", "optim.min_lr_ratio", 5),
    ("optim:\n  scheduler: linear\n  min_lr_ratio: 0.1", "optim.min_lr_ratio", 6),
    ("loss:\n  reasoning_weight: 1.0\n  answer_weight: -1.0", "loss.answer_weight", 6),
    ("dpo:\n  beta: 0.0", "dpo.beta", 5),
    ("dpo:\n  sft_weight: -1.0", "dpo.sft_weight", 5),
    ("profile:\n  start_step: -2", "profile.start_step", 5),
    ("launch:\n  num_processes: 0", "launch.num_processes", 5),
    ("method: full\nfreeze:\n  vision: true\n  merger: true\n  language_model: true", "freeze", 5),
    ("freeze:\n  language_model: true", "freeze.language_model", 5),
    ("optim:\n  eval_steps: 5", "optim.eval_steps", 5),
    ("objective: dpo\nloss:\n  reasoning_weight: 0.5", "loss.reasoning_weight", 6),
    ("dpo:\n  start_adapter: runs/sft", "dpo.start_adapter", 5),
    ("objective: grpo\noptim:\n  per_device_batch_size: 6", "optim.per_device_batch_size", 6),
    ("grpo:\n  num_generations: 1", "grpo.num_generations", 5),
    ("grpo:\n  rewards: [correct]\n  reward_weights: [1.0, 0.5]", "grpo.reward_weights", 6),
    ("objective: grpo\nmethod: full\ngrpo:\n  beta: 0.1", "grpo.beta", 7),
]


@pytest.mark.parametrize("body,key,line", CHECKS, ids=[f"{i}-{k}" for i, (_, k, _) in enumerate(CHECKS)])
def test_every_check_names_its_key_and_line(body, key, line, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(BASE + body + "\n")
    with pytest.raises(UserError) as e:
        load_recipe(path)
    assert (e.value.key, e.value.line) == (key, line), str(e.value)
    assert str(e.value).startswith(f"{path}:{line} [{key}]: ")


def test_a_check_raises_with_its_key_when_built_without_a_file():
    from qvq_tune.recipe import LossConfig, ProfileConfig, RecipeValueError
    with pytest.raises(RecipeValueError) as e:
        LossConfig(answer_weight=-1)
    assert e.value.key == "loss.answer_weight" and "loss.answer_weight" in str(e.value)
    with pytest.raises(RecipeValueError) as e:
        ProfileConfig(start_step=-1)
    assert e.value.key == "profile.start_step"
