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
