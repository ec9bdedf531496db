"""The step profiler (`profile.steps` in a recipe): where a training step's time goes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from qvq_tune.train.profile import breakdown, category

from .conftest import make_recipe


@pytest.mark.parametrize("op, expected", [
    ("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("aten::bmm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("bitsandbytes::dequantize_4bit", "quantisation"),
    ("c10d::allgather_", "communication"), ("gloo:all_gather", "communication"),
    ("record_param_comms", "communication"),
    ("aten::_foreach_mul_", "optimizer"), ("Optimizer.step#AdamW.step", "optimizer"),
    ("aten::add", "other_ops"),
    ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "data_loading"),
])
def test_operators_fall_into_their_category(op, expected):
    assert category(op) == expected


def test_breakdown_splits_wall_time_and_keeps_the_rest_as_python():
    events = [SimpleNamespace(key="aten::mm", self_cpu_time_total=3e6, count=10),
              SimpleNamespace(key="c10d::allgather_", self_cpu_time_total=1e6, count=4),
              SimpleNamespace(key="ProfilerStep#3", self_cpu_time_total=9e6, count=1)]   # a span, not an op
    out = breakdown(events, wall_seconds=8.0)
    assert out["seconds"]["matmul"] == 3.0 and out["seconds"]["communication"] == 1.0
    assert out["seconds"]["python_and_hooks"] == 4.0
    assert out["share"]["matmul"] == pytest.approx(3 / 8)
    assert sum(out["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert out["top_ops"][0]["op"] == "aten::mm"


def test_a_profiled_run_writes_its_breakdown(tmp_path, tiny_model, built_train):
    from qvq_tune.train.run import train
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"], steps=5,
                         **{"profile.steps": 2, "profile.start_step": 2})
    train(recipe, in_process=True)
    result = json.loads((recipe.run_dir / "profile" / "rank0.json").read_text())
    assert result["steps"] == 2 and result["first_step"] == 3 and len(result["between_steps_seconds"]) == 1
    assert 0 < sum(result["step_seconds"]) <= result["wall_seconds"]
    assert result["seconds"]["matmul"] > 0 and result["seconds"]["quantisation"] > 0   # QLoRA: 4-bit layers ran
    assert sum(result["share"].values()) == pytest.approx(1.0, abs=0.01)


def test_profile_keys_are_checked():
    from qvq_tune.errors import UserError
    from qvq_tune.recipe import recipe_from_dict
    with pytest.raises(UserError, match=r"\[profile.steps\]: profile.steps must be >= 0"):
        recipe_from_dict({"data": {"train": "x"}, "profile": {"steps": -1}})
