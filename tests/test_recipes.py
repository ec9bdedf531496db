"""Every shipped recipe and launcher preset loads; bad recipes fail before anything launches."""

from __future__ import annotations


import pytest
import yaml

from qvq_tune.errors import UserError
from qvq_tune.train.config import load_recipe
from qvq_tune.train.launch import presets, resolve_accelerate_config, write_resolved_config

from .conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipe_loads_and_names_a_real_preset(path):
    recipe = load_recipe(path)
    resolve_accelerate_config(recipe.launch.accelerate_config)
    assert recipe.to_dict()["optim"]["max_steps"] > 0


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
