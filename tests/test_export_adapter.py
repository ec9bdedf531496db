"""`export adapter`: a clean PEFT adapter, and a vLLM one that is mended (one line per change) or refused.

The adapters are made by PEFT itself on the tiny qwen2_vl (random, non-zero B), one per
feature vLLM does not serve: a rank above `--max-lora-rank` or above 512, `modules_to_save`,
DoRA, trained biases, LoRA on the vision tower, keys in the legacy layout, rsLoRA scaling.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from qvq_tune.errors import UserError


def make_adapter(base_dir, out, *, vision: bool = False, family: str = "qwen2_vl", **lora):
    """A PEFT LoRA adapter on `base_dir` with random A and B (no training needed)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from qvq_tune.models.registry import get_family
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(**{"r": 16, "lora_alpha": 32, "init_lora_weights": False,
                           "target_modules": get_family(family).lora_target_regex(vision=vision, merger=vision), **lora})
    get_peft_model(model, config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def base(tiny_model):
    return tiny_model("qwen2_vl")


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    made = {
        "plain": make_adapter(base, root / "plain"),
        "r12": make_adapter(base, root / "r12", r=12),
        "r32": make_adapter(base, root / "r32", r=32, lora_alpha=64),
        "r600": make_adapter(base, root / "r600", r=600, lora_alpha=600),
        "modules_to_save": make_adapter(base, root / "modules_to_save", modules_to_save=["lm_head"]),
        "dora": make_adapter(base, root / "dora", use_dora=True),
        "bias": make_adapter(base, root / "bias", bias="all"),
        "vision": make_adapter(base, root / "vision", vision=True),
        "rslora": make_adapter(base, root / "rslora", use_rslora=True),
    }
    legacy = shutil.copytree(made["plain"], root / "legacy")
    tensors = load_file(legacy / "adapter_model.safetensors")
    save_file({k.replace("model.language_model.", "model."): v for k, v in tensors.items()},
              legacy / "adapter_model.safetensors")
    made["legacy"] = legacy
    return made


def serve(adapters, base, name, **kwargs):
    from qvq_tune.export.adapter import Adapter
    from qvq_tune.export.names import NameIndex
    from qvq_tune.export.run import _module_names
    from qvq_tune.export.vllm import for_vllm
    from qvq_tune.models.registry import get_family
    fam = get_family("qwen2_vl")
    return for_vllm(Adapter.load(adapters[name]), fam, NameIndex(_module_names(base), fam.weight_prefix_aliases),
                    **kwargs)


def test_a_plain_adapter_is_served_as_is(adapters, base):
    served = serve(adapters, base, "plain")
    assert served.changes == [] and served.max_lora_rank == 16
    assert len(served.tensors) == 2 * 14 and all(k.startswith("base_model.model.model.language_model.")
                                                 for k in served.tensors)
    original = load_file(adapters["plain"] / "adapter_model.safetensors")
    assert all(torch.equal(served.tensors[k], original[k]) for k in original)


@pytest.mark.parametrize("name,kwargs,reason", [
    ("r32", {"max_lora_rank": 16}, "rank r=32 is above --max-lora-rank 16"),
    ("r600", {}, "rank r=600 is above the largest vLLM serves \\(512\\)"),
    ("modules_to_save", {}, "trains whole modules \\(lm_head\\): vLLM only supports modules_to_save being None"),
    ("dora", {}, "DoRA adapter"),
    ("bias", {}, "trains biases"),
])
def test_what_vllm_cannot_serve_is_refused_with_the_reason(adapters, base, name, kwargs, reason):
    with pytest.raises(UserError, match=f"vLLM cannot serve this adapter: .*{reason}.*export merge"):
        serve(adapters, base, name, **kwargs)


def test_a_rank_between_vllms_values_is_served_with_the_next_max_lora_rank(adapters, base):
    served = serve(adapters, base, "r12")
    assert served.max_lora_rank == 16 and served.config["r"] == 12
    assert served.changes == ["r=12 is not one of vLLM's --max-lora-rank values: serve with --max-lora-rank 16"]
    with pytest.raises(UserError, match="must be one of vLLM's 1, 8, 16"):
        serve(adapters, base, "r12", max_lora_rank=12)


def test_vision_tower_lora_is_dropped_or_kept_for_tower_serving(adapters, base):
    dropped = serve(adapters, base, "vision")
    assert not any(".visual." in k for k in dropped.tensors) and len(dropped.tensors) == 2 * 14
    assert len(dropped.changes) == 1 and dropped.changes[0].startswith("dropped ")
    assert "--enable-tower-connector-lora" in dropped.changes[0]
    kept = serve(adapters, base, "vision", tower_lora=True)
    assert any(".visual." in k for k in kept.tensors) and kept.tower_lora
    from qvq_tune.export.vllm import serve_command
    assert "--enable-tower-connector-lora" in serve_command("/m", "a", "/out", kept)
    assert "--enable-tower-connector-lora" not in serve_command("/m", "a", "/out", dropped)


def test_legacy_keys_are_renamed_to_the_layout_vllm_maps(adapters, base):
    served = serve(adapters, base, "legacy")
    assert served.changes[0].startswith("renamed 14 adapter modules")
    original = load_file(adapters["plain"] / "adapter_model.safetensors")
    assert set(served.tensors) == set(original)


def test_rslora_scale_is_folded_into_lora_b_exactly(adapters, base):
    from qvq_tune.export.adapter import Adapter
    served = serve(adapters, base, "rslora")
    assert any(c.startswith("folded the per-module scale of 14 modules") for c in served.changes)
    assert served.config["use_rslora"] is False
    original = Adapter.load(adapters["rslora"])
    scale = served.config["lora_alpha"] / served.config["r"]
    for module, pair in original.pairs.items():
        prefix = f"base_model.model.{module}"
        product = scale * served.tensors[f"{prefix}.lora_B.weight"] @ served.tensors[f"{prefix}.lora_A.weight"]
        assert torch.allclose(product, pair.delta(), atol=1e-6), module
    assert not torch.allclose(original.pairs[module].b, served.tensors[f"{prefix}.lora_B.weight"])


def test_export_adapter_writes_a_vllm_folder_with_its_serve_command(adapters, base, tmp_path):
    from qvq_tune.export.run import AdapterRequest, export_adapter
    out = tmp_path / "served"
    report = export_adapter(AdapterRequest(out=out, base=base, adapter=adapters["vision"], target="vllm"))
    assert report["changes"][0].startswith("dropped ")
    script = (out / "vllm_serve.sh").read_text()
    assert script.startswith("#!/bin/sh\nvllm serve ") and f"--lora-modules served={out}" in script
    assert "--max-lora-rank 16" in script and (out / "vllm_serve.sh").stat().st_mode & 0o100
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None and config["use_dora"] is False and config["bias"] == "none"
    assert not any("visual" in m for m in config["target_modules"])
    card = (out / "README.md").read_text()
    assert "base_model_relation: adapter" in card and "## Changes for serving" in card and "dropped" in card
    assert json.loads((out / "export_report.json").read_text())["vllm_serve"] in script
    assert {l.split("  ")[1] for l in (out / "SHA256SUMS").read_text().splitlines()} == \
        {p.name for p in out.iterdir()} - {"SHA256SUMS"}


def test_export_adapter_for_peft_renames_legacy_keys_so_peft_loads_them(adapters, base, tmp_path):
    """PEFT 0.21 skips adapter keys saved under the legacy layout (a warning, no error);
    the exported folder loads every tensor."""
    import warnings

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from qvq_tune.export.run import AdapterRequest, export_adapter
    out = tmp_path / "peft"
    report = export_adapter(AdapterRequest(out=out, base=base, adapter=adapters["legacy"], target="peft"))
    assert report["changes"][0].startswith("renamed 14 adapter modules")
    for folder, loads in ((adapters["legacy"], False), (out, True)):
        model = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            PeftModel.from_pretrained(model, str(folder))
        assert loads == (not any("missing adapter keys" in str(w.message) for w in caught)), folder
    assert (out / "tokenizer_config.json").is_file()         # the processor, as the run trained with it
