"""Export: merge into the unquantised base, verify numerically, and catch a bad merge.

The reference for the merged weights is computed here by hand from the adapter file
(W + alpha / r * B @ A), independent of PEFT's merge and of the code under test.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from qvq_tune.train.config import recipe_from_dict


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model, built_train):
    """A QLoRA adapter trained for a few steps on the tiny qwen2_vl."""
    from qvq_tune.train.run import train
    root = tmp_path_factory.mktemp("export_run")
    recipe = recipe_from_dict({
        "name": "r", "model": str(tiny_model("qwen2_vl")), "method": "qlora", "output_dir": str(root),
        "data": {"train": str(built_train["train"])},
        "optim": {"max_steps": 8, "per_device_batch_size": 8, "lr": 0.005, "warmup_steps": 1}})
    train(recipe, in_process=True)
    return recipe


def _batch(recipe, n=4):
    from qvq_tune.data.collate import VisionCollator
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.models.loading import load_processor
    ds = load_samples(recipe.data.train)
    return VisionCollator(load_processor(recipe.model))([ds[i] for i in range(n)])


def _hand_merged_weights(base_dir, adapter_dir) -> tuple[dict, int]:
    """Base weights (by module name) with every LoRA pair folded in: W + alpha/r * B @ A."""
    from transformers import AutoModelForImageTextToText
    weights = {k: v.detach().clone() for k, v in
               AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32).state_dict().items()}
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    merged = 0
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        weights[module + ".weight"] += scale * (b.float() @ a.float())
        merged += 1
    return weights, merged


def test_export_merges_into_bf16_matching_a_hand_computed_merge(trained_run, tmp_path):
    from transformers import AutoModelForImageTextToText

    from qvq_tune.export.run import export_run
    report = export_run(trained_run.run_dir, tmp_path / "exp")
    check = report["verification"]
    assert check["passed"]
    assert check["adapter_effect"] > 0.01, "the adapter must change the logits, or the check proves nothing"
    merged_dir = tmp_path / "exp" / "merged"
    config = json.loads((merged_dir / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert "quantization_config" not in config
    assert (tmp_path / "exp" / "adapter" / "adapter_config.json").is_file()

    reference, n_pairs = _hand_merged_weights(trained_run.model, trained_run.run_dir / "adapter")
    layers, per_layer = 2, 7                     # the tiny model's depth; 7 LM projections each
    assert n_pairs == layers * per_layer
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir, dtype=torch.float32).state_dict()
    assert merged.keys() == reference.keys()
    assert not any("lora" in k for k in merged)
    unmerged = AutoModelForImageTextToText.from_pretrained(trained_run.model, dtype=torch.float32).state_dict()
    adapted = [n for n in reference if not torch.equal(reference[n], unmerged[n])]
    assert len(adapted) == n_pairs
    for name, ref in reference.items():
        tol = ref.abs() * 2 ** -7 + 1e-6          # one bf16 ulp (8 significant bits)
        assert ((merged[name] - ref).abs() <= tol).all(), name
    # The check can fail: the unmerged base is outside that tolerance on every adapted weight.
    for name in adapted:
        tol = reference[name].abs() * 2 ** -7 + 1e-6
        assert ((unmerged[name] - reference[name]).abs() > tol).any(), name


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
