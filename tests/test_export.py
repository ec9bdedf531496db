"""Export: merge into the unquantised base, verify numerically, and catch a bad merge."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from qvq_tune.train.config import recipe_from_dict


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model, built_train):
    """A QLoRA adapter trained for a few steps on the tiny qwen2_vl."""
    from qvq_tune.train.sft import run_sft
    root = tmp_path_factory.mktemp("export_run")
    recipe = recipe_from_dict({
        "name": "r", "model": str(tiny_model("qwen2_vl")), "method": "qlora", "output_dir": str(root),
        "data": {"train": str(built_train["train"])},
        "optim": {"max_steps": 8, "per_device_batch_size": 8, "lr": 0.005, "warmup_steps": 1}})
    run_sft(recipe)
    return recipe


def _batch(recipe, n=4):
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.models.loading import load_processor
    from qvq_tune.train.collators import VisionSFTCollator
    ds = load_samples(recipe.data.train)
    return VisionSFTCollator(load_processor(recipe.model))([ds[i] for i in range(n)])


def test_export_merges_into_bf16_and_verifies(trained_run, tmp_path):
    from qvq_tune.export.merge import export_run
    report = export_run(trained_run.model, str(trained_run.run_dir / "adapter"), tmp_path / "exp",
                        _batch(trained_run))
    check = report["verification"]
    assert check["passed"] and check["exact_max_abs_logit_diff"] < 1e-3
    assert check["adapter_effect"] > 0.01, "the adapter must change the logits, or the check proves nothing"
    config = json.loads((tmp_path / "exp" / "merged" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert "quantization_config" not in config
    assert (tmp_path / "exp" / "adapter" / "adapter_config.json").is_file()
    from transformers import AutoModelForImageTextToText
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "exp" / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_verification_catches_a_merge_that_is_not_base_plus_adapter(trained_run, tmp_path):
    """Export the *base* as if it were the merged model: the check must fail."""
    from qvq_tune.export.merge import reply_positions, verify_merge
    fake = tmp_path / "fake_merged"
    shutil.copytree(trained_run.model, fake)
    batch = _batch(trained_run)
    replies = reply_positions(batch.pop("labels"))
    check = verify_merge(trained_run.model, str(trained_run.run_dir / "adapter"), str(fake), batch, replies)
    assert not check.passed
    assert check.saved_reply_worst_flip > 1.0


def test_refuses_to_merge_into_4bit_weights(trained_run):
    from qvq_tune.export.merge import _assert_unquantised
    from qvq_tune.models.loading import load_model
    quantised = load_model(trained_run.model, load_in_4bit=True)
    with pytest.raises(RuntimeError, match="quantised"):
        _assert_unquantised(quantised)
    _assert_unquantised(load_model(trained_run.model))


def test_reply_positions_shift_labels_left():
    from qvq_tune.export.merge import reply_positions
    labels = torch.tensor([[-100, -100, 5, 6, -100]])
    assert reply_positions(labels).tolist() == [[False, True, True, False, False]]
