"""Every shipped recipe and launcher preset loads; bad recipes fail before anything launches."""

from __future__ import annotations


import pytest
import yaml

from qvq_tune.errors import UserError
from qvq_tune.train.config import load_recipe
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
    assert z3["distributed_type"] == "DEEPSPEED" and z3["deepspeed_config"]["zero_stage"] == 3


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
