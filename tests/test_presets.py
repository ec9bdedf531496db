"""Presets and recipes ship inside the package; the repository's top-level copies equal them."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from qvq_tune import presets
from qvq_tune.recipe import load_recipe
from qvq_tune.train.launch import resolve_accelerate_config

from .conftest import REPO


@pytest.mark.parametrize("kind,top", [(presets.ACCELERATE, "accelerate_configs"), (presets.RECIPES, "recipes")])
def test_top_level_copies_equal_the_packaged_files(kind, top):
    packaged, user_facing = presets.folder(kind), REPO / top
    names = sorted(p.name for p in packaged.iterdir() if p.is_file() and p.suffix != ".py")
    assert names == sorted(p.name for p in user_facing.iterdir() if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(packaged, user_facing, names, shallow=False)
    assert not mismatch and not errors, f"edit both copies: {mismatch + errors}"


@pytest.mark.parametrize("name", presets.names(presets.RECIPES))
def test_packaged_recipe_loads_by_name(name):
    recipe = load_recipe(name)
    resolve_accelerate_config(recipe.launch.accelerate_config)


def test_every_preset_resolves_and_its_deepspeed_file_exists(tmp_path):
    import yaml

    from qvq_tune.train.launch import write_resolved_config
    for name in presets.names(presets.ACCELERATE):
        path = resolve_accelerate_config(name)
        assert path.parent == presets.folder(presets.ACCELERATE)
        cfg = yaml.safe_load(write_resolved_config(name, 2, tmp_path / f"{name}.yaml").read_text())
        ds_file = (cfg.get("deepspeed_config") or {}).get("deepspeed_config_file")
        if ds_file:   # made absolute, pointing inside the package
            assert Path(ds_file).is_file() and Path(ds_file).parent == presets.folder(presets.ACCELERATE)


def _deepspeed_config(name: str, tmp_path) -> dict | None:
    """The DeepSpeed config a preset hands to the trainer: its JSON file, or the one accelerate
    builds from the YAML's inline keys (which have no thresholds); None for other launchers."""
    import json

    import yaml

    from qvq_tune.train.launch import write_resolved_config
    cfg = yaml.safe_load(write_resolved_config(name, 2, tmp_path / f"{name}.yaml").read_text())
    if cfg.get("distributed_type") != "DEEPSPEED":
        return None
    ds = cfg["deepspeed_config"]
    if ds.get("deepspeed_config_file"):
        return json.loads(Path(ds["deepspeed_config_file"]).read_text())
    return {"zero_optimization": {"stage": ds.get("zero_stage", 0)}}


def _as_trainer_fills_it(config: dict, model_dir: Path) -> dict:
    """The config after transformers' DeepSpeed integration filled its "auto" entries for this
    model (what the Trainer does before DeepSpeed starts), then read by DeepSpeed itself."""
    import copy
    from types import SimpleNamespace

    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers import AutoConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config
    try:
        hf = HfTrainerDeepSpeedConfig(copy.deepcopy(config))
        hf.trainer_config_finalize(SimpleNamespace(get_warmup_steps=lambda steps: 0),
                                   SimpleNamespace(config=AutoConfig.from_pretrained(model_dir)), 10)
        zero = {k: v for k, v in hf.config["zero_optimization"].items() if v != "auto"}
    finally:
        unset_hf_deepspeed_config()          # the integration keeps a global: leave none behind
    return DeepSpeedZeroConfig(**zero).model_dump()


def test_zero3_presets_shard_what_they_say(tmp_path, tiny_model):
    """Every ZeRO-3 preset sets the persistence threshold (a tensor under it stays whole on every
    rank) rather than leaving DeepSpeed's default of 100,000 elements, which keeps every tensor of a
    small model, and the norms and biases of a large one, unsharded; `auto` must resolve to
    10 x the model's hidden size, as transformers fills it."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    default = DeepSpeedZeroConfig().param_persistence_threshold
    model = tiny_model("qwen2_vl")
    import json
    hidden = json.loads((model / "config.json").read_text())["text_config"]["hidden_size"]
    zero3 = {}
    for name in presets.names(presets.ACCELERATE):
        config = _deepspeed_config(name, tmp_path)
        if config and config["zero_optimization"].get("stage") == 3:
            zero3[name] = config
            given = config["zero_optimization"].get("stage3_param_persistence_threshold")
            assert given is not None, f"{name}: stage3_param_persistence_threshold not set (DeepSpeed's default)"
            resolved = _as_trainer_fills_it(config, model)
            assert resolved["param_persistence_threshold"] != default, name
            if given == "auto":
                assert resolved["param_persistence_threshold"] == 10 * hidden, name
                assert resolved["prefetch_bucket_size"] == int(0.9 * hidden * hidden), name
                assert resolved["reduce_bucket_size"] == hidden * hidden, name
            assert config["zero_optimization"].get("stage3_max_live_parameters") is not None, name
    assert {"zero3", "zero3_offload", "multi_node_zero3", "zero3_shard_all"} <= set(zero3)
