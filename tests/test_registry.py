"""The family registry and checkpoint detection."""

from __future__ import annotations

import json
import re

import pytest
import torch

from qvq_tune.errors import UserError
from qvq_tune.models.detect import detect
from qvq_tune.models.registry import CHECKPOINTS, FAMILIES, QVQ_SYSTEM_PROMPT, get_family

from .conftest import FAMILIES as ZOO_FAMILIES


def test_every_family_names_real_transformers_classes():
    import transformers
    for fam in FAMILIES.values():
        for cls in (fam.model_class, fam.processor_class, fam.image_processor_class, fam.video_processor_class):
            assert hasattr(transformers, cls), f"{fam.name}: transformers has no {cls}"


def test_known_checkpoints_point_at_registered_families():
    assert CHECKPOINTS["Qwen/QVQ-72B-Preview"].reasoning_style == "qvq"
    assert CHECKPOINTS["Qwen/QVQ-72B-Preview"].system_prompt == QVQ_SYSTEM_PROMPT
    assert "You should think step-by-step." in QVQ_SYSTEM_PROMPT
    assert CHECKPOINTS["Qwen/QVQ-72B-Preview"].license == "qwen"
    assert CHECKPOINTS["Qwen/Qwen2.5-VL-3B-Instruct"].license == "qwen-research"
    for ckpt in CHECKPOINTS.values():
        assert ckpt.family in FAMILIES


def test_unknown_family_lists_supported():
    with pytest.raises(UserError, match="qwen2_vl"):
        get_family("llava")


@pytest.mark.parametrize("family", ZOO_FAMILIES)
def test_module_prefixes_and_lora_targets_match_the_real_model(family, tiny_model):
    """Prefixes and the LoRA regex are checked against the module tree of a built model."""
    from transformers import AutoModelForImageTextToText
    fam = get_family(family)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model(family))
    names = [n for n, _ in model.named_modules()]
    for prefix in fam.vision_prefixes + fam.merger_prefixes + (fam.language_model_prefix,):
        assert any(n == prefix or n.startswith(prefix + ".") for n in names), prefix
    pattern = re.compile(fam.lora_target_regex())
    targets = [n for n in names if pattern.fullmatch(n)]
    layers = model.config.text_config.num_hidden_layers
    assert len(targets) == layers * len(fam.lora_targets)
    assert all(isinstance(model.get_submodule(t), torch.nn.Linear) for t in targets)
    assert not any(t.startswith("model.visual") for t in targets)
    with_vision = [n for n in names if re.fullmatch(fam.lora_target_regex(vision=True, merger=True), n)]
    assert any(t.startswith("model.visual") for t in with_vision)
    assert all(isinstance(model.get_submodule(t), torch.nn.Linear) for t in with_vision)


def test_detect_tiny_checkpoint(tiny_model):
    d = detect(tiny_model("qwen2_vl"))
    assert d.family == "qwen2_vl" and d.is_tiny and d.license == "apache-2.0"
    assert d.model_class == "Qwen2VLForConditionalGeneration"


def test_detect_real_checkpoint_by_folder_name_and_card(tmp_path):
    folder = tmp_path / "QVQ-72B-Preview"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_vl",
                                                    "architectures": ["Qwen2VLForConditionalGeneration"]}))
    d = detect(folder)
    assert (d.checkpoint, d.license, d.reasoning_style) == ("Qwen/QVQ-72B-Preview", "qwen", "qvq")
    other = tmp_path / "my-finetune"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (other / "README.md").write_text("---\nlicense: qwen-research\nbase_model: Qwen/Qwen2.5-VL-3B-Instruct\n---\n# x\n")
    d = detect(other)
    assert (d.family, d.checkpoint, d.license) == ("qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct", "qwen-research")


def test_detect_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="does not exist") as e:
        detect(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON") as e:
        detect(tmp_path / "bad")
    assert "config.json:1" in str(e.value)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="unsupported architecture 'llama'.*qwen2_5_vl.*qwen3_vl"):
        detect(tmp_path / "llama")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        detect(tmp_path / "empty")


@pytest.mark.parametrize("family", ZOO_FAMILIES)
def test_4bit_loading_keeps_vision_tower_merger_and_head_out_of_4bit(family, tiny_model):
    """QLoRA quantises the language model only; the skip list comes from the registry's prefixes."""
    from qvq_tune.models.loading import load_model, quantised_modules
    fam = get_family(family)
    quantised = quantised_modules(load_model(tiny_model(family), load_in_4bit=True))
    kept_out = fam.vision_prefixes + fam.merger_prefixes + ("lm_head",)
    assert not [n for n in quantised if n.startswith(kept_out)]
    lm = re.compile(fam.lora_target_regex())
    assert [n for n in quantised if lm.fullmatch(n)], "the language model's projections are 4-bit"
    assert all(n.startswith(fam.language_model_prefix) for n in quantised)
