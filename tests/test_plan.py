"""`qvq-tune plan`: per-GPU memory by term, from exact parameter counts (meta-device models)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qvq_tune.train.plan import PlanRequest, plan


def test_parameter_counts_are_those_of_the_checkpoint(tiny_model):
    """Part sizes equal the loaded model's; the LoRA count equals what PEFT trains (r=16 on the
    language model's seven projections)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from qvq_tune.models.registry import get_family
    folder = tiny_model("qwen2_vl")
    family = get_family("qwen2_vl")
    result = plan(PlanRequest(model=str(folder), method="lora", lora_r=16))
    model = AutoModelForImageTextToText.from_pretrained(str(folder))
    parts = {"language_model": 0, "vision": 0, "merger": 0}
    for name, p in model.named_parameters():
        parts[family.part_of(name)] += p.numel()
    assert {k: result.parameters[k] for k in parts} == parts
    peft = get_peft_model(model, LoraConfig(r=16, target_modules=family.lora_target_regex(vision=False)))
    assert result.parameters["trainable"] == sum(p.numel() for p in peft.parameters() if p.requires_grad)


def test_qvq_72b_qlora_fits_one_141gb_gpu_with_checkpointing_only():
    req = dict(model="qwen2_vl-72b", method="qlora", gpus=1, seq_len=8192, images_per_sample=1)
    fits = plan(PlanRequest(gpu_mem=141, **req))
    assert fits.fits and 36 < fits.gb["weights"] < 48           # ~73B parameters, mostly at ~0.52 byte
    without = plan(PlanRequest(gpu_mem=141, checkpointing=False, **req))
    assert without.gb["activations"] > 10 * fits.gb["activations"]      # 80 layers kept, not 1 + inputs
    small = plan(PlanRequest(gpu_mem=24, **req))
    assert not small.fits and small.advice and all("GB per GPU" in line for line in small.advice)


def test_zero3_shards_weights_and_states_across_gpus():
    one = plan(PlanRequest(model="qwen2_5_vl-7b", method="lora", gpus=1, zero=0))
    eight = plan(PlanRequest(model="qwen2_5_vl-7b", method="lora", gpus=8, zero=3))
    assert eight.gb["weights"] == pytest.approx(one.gb["weights"] / 8, rel=0.01)
    assert eight.gb["activations"] == one.gb["activations"]         # per GPU, the same tokens
    full = plan(PlanRequest(model="qwen2_5_vl-7b", method="full", gpus=8, zero=3))
    assert full.gb["optimizer"] > 100 * eight.gb["optimizer"]      # every weight trains, not the adapter


def test_the_lm_head_tile_follows_the_tokens_and_the_vocabulary(tiny_model):
    """TRL's fused head holds one tile of at most 4096 tokens x 32768 vocabulary entries."""
    from transformers import AutoConfig
    vocab = AutoConfig.from_pretrained(str(tiny_model("qwen2_vl"))).text_config.vocab_size
    small = plan(PlanRequest(model=str(tiny_model("qwen2_vl")), seq_len=100, batch_size=2, dtype="float32"))
    assert small.gb["lm_head_tile"] == pytest.approx(200 * vocab * 4 / 1e9, abs=1e-3)
    big = plan(PlanRequest(model="qwen2_vl-72b", seq_len=8192))
    assert big.gb["lm_head_tile"] == pytest.approx(4096 * 32768 * 4 / 1e9, abs=1e-3)


def test_cli_prints_a_verdict_and_json():
    cmd = [sys.executable, "-m", "qvq_tune", "plan", "--model", "qwen2_vl-72b", "--method", "qlora", "--gpus", "1",
           "--gpu-mem", "141", "--seq-len", "8192"]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "qwen2_vl-72b QLORA, 8192-token samples: fits 1 x 141 GB with checkpointing" in text
    data = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert data["fits"] is True and data["total_gb"] == pytest.approx(sum(data["gb"].values()), abs=0.02)


def test_zero3_holds_the_largest_weight_whole_and_a_cpu_run_has_its_own_terms():
    """ZeRO-3 gathers the 151,936 x 1,536 embedding / LM head whole on every rank; on a CPU TRL's
    torch fold of the LM head holds six tiles; DPO scores two rows per sample."""
    from qvq_tune.train.plan import CPU_RUNTIME_GB, CPU_TILE_COPIES
    req = dict(model="qwen2_vl-2b", method="qlora", seq_len=1000, dtype="float32")
    z3 = plan(PlanRequest(gpus=2, zero=3, **req))
    assert z3.gb["zero3_gathered"] == pytest.approx(151936 * 1536 * 4 / 1e9, abs=1e-3)
    assert plan(PlanRequest(gpus=2, zero=2, **req)).gb["zero3_gathered"] == 0    # weights are whole anyway
    cpu = plan(PlanRequest(gpus=2, zero=3, device="cpu", runtime_gb=0.5, **req))
    assert cpu.gb["lm_head_tile"] == pytest.approx(CPU_TILE_COPIES * z3.gb["lm_head_tile"], abs=5e-3)
    rest = sum(v for k, v in cpu.gb.items() if k != "runtime")
    assert cpu.gb["runtime"] == pytest.approx(0.5 + 0.08 * rest, abs=2e-3)
    assert plan(PlanRequest(gpus=2, zero=3, device="cpu", **req)).gb["runtime"] > CPU_RUNTIME_GB
    dpo = plan(PlanRequest(gpus=2, zero=3, objective="dpo", **req))
    assert dpo.gb["lm_head_tile"] == pytest.approx(2 * z3.gb["lm_head_tile"], abs=2e-3)
    assert dpo.gb["activations"] == pytest.approx(2 * z3.gb["activations"], abs=2e-3)
    assert dpo.gb["weights"] == z3.gb["weights"]
    grpo = plan(PlanRequest(gpus=2, zero=3, objective="grpo", num_generations=4, **req))
    assert grpo.gb["activations"] == pytest.approx(4 * z3.gb["activations"], abs=2e-3)
    assert grpo.gb["weights"] == z3.gb["weights"]
    assert plan(PlanRequest(gpus=2, zero=3, num_generations=4, **req)).gb == z3.gb       # sft ignores it
