"""Training: QLoRA / LoRA / full SFT in-process, and real multi-process launches on CPU."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from .conftest import make_recipe


def _recipe(tmp_path, model, data, **over):
    return make_recipe(tmp_path, model, data, steps=6, batch=8, **over)


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_lora_methods_train_only_the_adapter(method, tmp_path, tiny_model, built_train):
    from qvq_tune.train.run import train
    recipe = _recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"], method=method)
    report = train(recipe, in_process=True)
    run = recipe.run_dir
    assert report["steps"] == 6 and report["world_size"] == 1
    assert 0 < report["train_cpu_seconds"]        # the process's CPU time from the first step to the last
    r, h, i, layers = 16, 128, 512, 2   # LoRA rank; the tiny model's hidden, MLP and depth
    assert report["trainable_parameters"] == layers * r * (4 * (h + h) + 3 * (h + i))
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert not any("visual" in k for k in adapter), "vision tower must stay frozen by default"
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k), "adapter did not move"
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16
    for name in ("recipe.yaml", "base_model.json", "dataset.json", "metrics.jsonl", "train_report.json"):
        assert (run / name).is_file(), name
    from qvq_tune.train.callbacks import read_metrics
    losses = [m["loss"] for m in read_metrics(run / "metrics.jsonl") if "loss" in m]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_full_finetune_changes_the_language_model_only(tmp_path, tiny_model, built_train):
    from qvq_tune.train.run import train
    base = tiny_model("qwen2_vl")
    recipe = _recipe(tmp_path, base, built_train["train"], method="full", **{"optim.lr": 0.001})
    train(recipe, in_process=True)
    from transformers import AutoModelForImageTextToText
    before = dict(AutoModelForImageTextToText.from_pretrained(base).named_parameters())
    after = dict(AutoModelForImageTextToText.from_pretrained(recipe.run_dir / "adapter").named_parameters())
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.language_model") for k in changed)
    assert not any(k.startswith("model.visual") for k in changed)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["zero3", "ddp"])
def test_two_process_launch_on_cpu(preset, tmp_path, tiny_model, built_train):
    """Real `accelerate launch` across 2 CPU processes: DeepSpeed ZeRO-3 (QLoRA) and DDP.
    Under the `zero3` preset each rank's holdings, read from DeepSpeed's parameter state,
    show the sharding sized from the hidden size: tensors up to 10 x hidden whole, larger
    ones partitioned, the two ranks' partitions adding up to the partitioned tensors."""
    from qvq_tune.train.run import train
    model = tiny_model("qwen2_vl")
    recipe = _recipe(tmp_path, model, built_train["train"], name=preset,
                     **{"launch.accelerate_config": preset, "launch.num_processes": 2,
                        "optim.per_device_batch_size": 4})
    report = train(recipe)
    assert report == json.loads((recipe.run_dir / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 6
    assert 0 < report["train_cpu_seconds"]        # both ranks' CPU time in training, summed
    part = report["zero3_partition"]
    if preset.startswith("zero3"):
        hidden = json.loads((model / "config.json").read_text())["text_config"]["hidden_size"]
        ranks = part["ranks"]
        assert len(ranks) == 2
        for held in ranks:
            assert held["whole_tensors"] > 0 and held["partitioned_tensors"] > 0
            assert held["whole_tensors"] + held["partitioned_tensors"] == held["tensors"]
            assert held["whole_numel"] + held["partitioned_numel"] == held["numel"]
            assert held["largest_whole_numel"] <= 10 * hidden < held["smallest_partitioned_numel"]
            assert held["partition_numel"] < held["partitioned_numel"]
        assert {(r["tensors"], r["numel"], r["whole_tensors"], r["partitioned_numel"]) for r in ranks} == \
            {(ranks[0]["tensors"], ranks[0]["numel"], ranks[0]["whole_tensors"], ranks[0]["partitioned_numel"])}
        shares, parted = sum(r["partition_numel"] for r in ranks), ranks[0]["partitioned_numel"]
        assert parted <= shares <= parted + ranks[0]["partitioned_tensors"]     # each rank's part, padded
        assert part["local_numel"] < part["full_numel"]
    else:
        assert part is None
    adapter = load_file(recipe.run_dir / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert report["train_loss_last"] < report["train_loss_first"]


@pytest.mark.parametrize("method, vision_lora", [("qlora", False), ("lora", False), ("lora", True)])
def test_a_frozen_vision_tower_is_kept_out_of_the_backward(method, vision_lora, tmp_path, tiny_model, built_train):
    """With gradient checkpointing, transformers hooks every sub-model's input embeddings to
    require grad, the vision tower's patch embedding too: backward then ran through (and
    re-ran) the whole frozen tower. Frozen, the tower's output needs no grad and the LoRA
    weights still get theirs; with LoRA on the tower, the hook (and its gradient) stays."""
    from qvq_tune.data.collate import VisionCollator
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.models.loading import load_processor
    from qvq_tune.models.registry import get_family
    from qvq_tune.train.model_setup import build_model
    base = tiny_model("qwen2_vl")
    recipe = _recipe(tmp_path, base, built_train["train"], method=method,
                     **{"optim.gradient_checkpointing": True, "lora.vision": vision_lora})
    family = get_family("qwen2_vl")
    model = build_model(recipe, family, str(base))
    model.enable_input_require_grads()            # as TRL's trainer does after the set-up
    model.train()
    hf = model.get_base_model()
    seen = {}
    hf.model.visual.register_forward_hook(lambda m, i, out: seen.update(
        vision=(out.pooler_output if hasattr(out, "pooler_output") else out[0]).requires_grad))
    batch = VisionCollator(load_processor(base))([load_samples(built_train["train"])[i] for i in range(2)])
    hf.config.use_cache = False
    model(**batch).loss.backward()
    assert seen["vision"] is vision_lora
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n and "visual" not in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    if vision_lora:
        assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n and "visual" in n)
