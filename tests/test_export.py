"""`export merge`: the streamed merge, its proof, and a target that only ever holds a checked export.

The references are independent of the merge code: PEFT's own `merge_and_unload` for the
weights, PEFT's unmerged forward (inside the proof) for the logits. Bases are re-saved in
several shards and in both weight-name layouts; adapters in both key layouts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qvq_tune.errors import UserError
from qvq_tune.recipe import recipe_from_dict

from .conftest import FAMILIES
from .test_export_adapter import make_adapter

# transformers 5 saves the tiny qwen2_vl in the legacy layout; the module tree nests it.
TO_MODULE_TREE = (("model.", "model.language_model."), ("visual.", "model.visual."))


def _rename(name: str, pairs) -> str:
    for old, new in pairs:
        if name.startswith(old) and not name.startswith(new):
            return new + name[len(old):]
    return name


def reshard(src, dst, *, shards: int, module_tree: bool):
    """A copy of the checkpoint `src` with its weights split over `shards` files (with an
    index), named in the legacy layout as saved or in the module-tree layout."""
    src = Path(src)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors*"))
    weights = load_file(src / "model.safetensors")
    names = sorted(weights)
    weight_map = {}
    for i in range(shards):
        part = {(_rename(n, TO_MODULE_TREE) if module_tree else n): weights[n] for n in names[i::shards]}
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, dst / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in weights.values())
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}))
    return dst


def legacy_adapter(src, dst):
    """The adapter with its keys in the legacy (`model.layers.*`) layout."""
    shutil.copytree(src, dst)
    tensors = load_file(src / "adapter_model.safetensors")
    save_file({k.replace("model.language_model.", "model."): v for k, v in tensors.items()},
              dst / "adapter_model.safetensors")
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, built_train):
    """A LoRA and a QLoRA adapter trained for a few steps on the tiny qwen2_vl."""
    from qvq_tune.train.run import train
    root = tmp_path_factory.mktemp("export_runs")
    out = {}
    for method in ("lora", "qlora"):
        recipe = recipe_from_dict({
            "name": method, "model": str(tiny_model("qwen2_vl")), "method": method, "output_dir": str(root),
            "data": {"train": str(built_train["train"])},
            "optim": {"max_steps": 8, "per_device_batch_size": 8, "lr": 0.005, "warmup_steps": 1}})
        train(recipe, in_process=True)
        out[method] = recipe
    return out


def peft_merged(base_dir, adapter_dir) -> dict:
    """PEFT's own merge of the adapter into the fp32 base: the weights reference."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText
    base = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32)
    return {k: v.detach().clone() for k, v in
            PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().state_dict().items()}


def reloaded(folder) -> dict:
    from transformers import AutoModelForImageTextToText
    return {k: v.detach() for k, v in
            AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).state_dict().items()}


def reply_agreement(merged_dir, base_dir, adapter_dir, data, samples: int) -> float:
    """Share of reply positions where the merged folder and PEFT's adapter on the 4-bit base
    pick the same next token, on the proof's samples: recomputed apart from the proof code."""
    from peft import PeftModel

    from qvq_tune.export.sources import Sources, proof_batch
    from qvq_tune.models.loading import load_model
    batch = proof_batch(Sources(Path(base_dir), Path(adapter_dir), Path(data)), samples)
    labels = batch.pop("labels")
    with torch.no_grad():
        merged = load_model(merged_dir).eval()(**batch).logits
        quantized = PeftModel.from_pretrained(load_model(base_dir, load_in_4bit=True), str(adapter_dir)).eval()
        reference = quantized(**batch).logits
    scored = labels[:, 1:] != -100                       # positions whose next token is a reply token
    same = merged[:, :-1].argmax(-1) == reference[:, :-1].argmax(-1)
    return same[scored].float().mean().item()


def check_sums(folder):
    rows = (folder / "SHA256SUMS").read_text().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in rows}
    assert set(listed) == {p.name for p in folder.iterdir() if p.name != "SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_lora_into_a_sharded_legacy_base_equals_peft_merge(runs, tmp_path):
    """Module-tree adapter keys into a base whose 5 shards use the legacy names, fp32: the
    merged weights equal PEFT's merge_and_unload; the folder loads like the base."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from qvq_tune.export.run import MergeRequest, export_merge
    recipe = runs["lora"]
    base = reshard(recipe.model, tmp_path / "base", shards=5, module_tree=False)
    out = tmp_path / "merged"
    report = export_merge(MergeRequest(out=out, base=base, adapter=recipe.run_dir / "adapter",
                                       data=recipe.data.train, dtype="fp32"))
    assert report["proof"]["passed"] and report["merge"]["shards"] == 5
    assert report["merge"]["adapted_weights"] == 2 * 7            # 2 layers x 7 projections
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 5
    assert all(not n.startswith("model.language_model.") for n in index["weight_map"])   # the base's own names
    expected, merged = peft_merged(recipe.model, recipe.run_dir / "adapter"), reloaded(out)
    assert merged.keys() == expected.keys()
    original = reloaded(recipe.model)
    changed = [n for n in expected if not torch.equal(expected[n], original[n])]
    assert len(changed) == 14
    for name in expected:
        assert torch.allclose(merged[name], expected[name], atol=1e-6, rtol=1e-5), name
    assert all(not torch.allclose(merged[n], original[n], atol=1e-4) for n in changed)   # the check can fail
    proof = report["proof"]
    assert proof["vs_base_plus_adapter"]["max_abs_logit_diff"] <= proof["tolerance"]["max_abs_logit_diff"]
    assert proof["adapter_effect"] > 10 * proof["vs_base_plus_adapter"]["max_abs_logit_diff"]
    assert proof["vs_4bit_base_plus_adapter"] is None                               # a LoRA run
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and "quantization_config" not in config
    assert isinstance(AutoModelForImageTextToText.from_pretrained(str(out)), type(
        AutoModelForImageTextToText.from_pretrained(str(recipe.model))))
    processor = AutoProcessor.from_pretrained(str(out))
    assert processor.chat_template == AutoProcessor.from_pretrained(str(recipe.model)).chat_template
    check_sums(out)


def test_qlora_legacy_keys_into_a_sharded_module_tree_base_bf16(runs, tmp_path):
    """Legacy adapter keys into a module-tree base in 3 shards, bf16: within one bf16 ulp of
    PEFT's merge; the proof reports the 4-bit base + adapter the run trained on separately."""
    from qvq_tune.export.run import export_merge, MergeRequest
    recipe = runs["qlora"]
    base = reshard(recipe.model, tmp_path / "base", shards=3, module_tree=True)
    adapter = legacy_adapter(recipe.run_dir / "adapter", tmp_path / "adapter")
    out = tmp_path / "merged"
    report = export_merge(MergeRequest(out=out, base=base, adapter=adapter, data=recipe.data.train, qlora=True))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert all(n.startswith(("model.language_model.", "model.visual.", "lm_head")) for n in index["weight_map"])
    expected, merged = peft_merged(recipe.model, recipe.run_dir / "adapter"), reloaded(out)
    for name, ref in expected.items():
        assert ((merged[name] - ref).abs() <= ref.abs() * 2 ** -8 + 1e-6).all(), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert report["proof"]["passed"] and report["proof"]["dtype"] == "bfloat16"
    assert report["proof"]["rounding_floor"] > 0          # the fp32 base rounded to bf16 is measured
    as_trained = report["proof"]["vs_4bit_base_plus_adapter"]
    agreement = reply_agreement(out, recipe.model, recipe.run_dir / "adapter", recipe.data.train,
                                report["proof"]["samples"])
    assert as_trained["reply_top1_agreement"] == pytest.approx(agreement, abs=1e-6)


def test_qlora_merged_into_its_4bit_rounding_computes_what_the_4bit_model_did(runs, tmp_path):
    """`--base-weights as-trained`: every weight the 4-bit model held is the dequantised NF4
    value transformers + bitsandbytes loaded (read back from a 4-bit model, not from our
    rounding code) plus PEFT's LoRA delta; the proof gates on the 4-bit base + adapter."""
    import bitsandbytes.functional as bnbf

    from qvq_tune.export.run import MergeRequest, export_merge
    from qvq_tune.models.loading import load_model, quantised_modules
    recipe = runs["qlora"]
    out = tmp_path / "merged"
    report = export_merge(MergeRequest(out=out, run=recipe.run_dir, dtype="fp32", base_weights="as-trained"))
    q_model = load_model(recipe.model, load_in_4bit=True, dtype="float32", quant_type="nf4", double_quant=True)
    four_bit = dict(q_model.named_modules())
    names = quantised_modules(q_model)
    assert names and report["merge"]["rounded_weights"] == len(names)
    original = reloaded(recipe.model)
    delta = {k: v - original[k] for k, v in peft_merged(recipe.model, recipe.run_dir / "adapter").items()}
    merged = reloaded(out)
    for module in names:
        w = four_bit[module].weight
        rounded = bnbf.dequantize_4bit(w.data, w.quant_state).float()
        key = f"{module}.weight"
        assert not torch.allclose(rounded, original[key], atol=1e-4), "the rounding must show"
        assert torch.allclose(merged[key], rounded + delta[key], atol=1e-5, rtol=1e-5), key
    untouched = [k for k in original if k.startswith("model.visual") or k.startswith("lm_head")]
    assert untouched and all(torch.equal(merged[k], original[k]) for k in untouched)
    proof = report["proof"]
    assert proof["passed"] and proof["gated_on"] == "4bit_base_plus_adapter"
    q, o = proof["vs_4bit_base_plus_adapter"], proof["vs_base_plus_adapter"]
    assert q["reply_top1_agreement"] == 1.0 and q["max_abs_logit_diff"] < 1e-3 < o["max_abs_logit_diff"]
    assert "4-bit (NF4) rounding" in (out / "README.md").read_text()
    with pytest.raises(UserError, match="applies to a QLoRA adapter"):
        export_merge(MergeRequest(out=tmp_path / "lora", run=runs["lora"].run_dir, base_weights="as-trained"))
    cli = subprocess.run([sys.executable, "-m", "qvq_tune", "export", "merge", "--run", str(recipe.run_dir),
                          "--out", str(tmp_path / "cli"), "--base-weights", "as-trained"],
                         capture_output=True, text=True)
    printed = json.loads(cli.stdout)
    assert cli.returncode == 0 and printed["proof_passed"] and printed["gated_on"] == "4bit_base_plus_adapter"
    assert printed["vs_4bit_base_plus_adapter"]["reply_top1_agreement"] == 1.0


def test_run_export_reads_everything_from_the_run_folder(runs, built_train, tmp_path):
    """Base, adapter, 4-bit settings and training data from the run; the proof on held-out data."""
    from qvq_tune.export.run import MergeRequest, export_merge
    out = tmp_path / "m"
    report = export_merge(MergeRequest(out=out, run=runs["qlora"].run_dir, data=built_train["test"]))
    assert report["run"] == str(runs["qlora"].run_dir) and report["proof"]["vs_4bit_base_plus_adapter"]
    card = (out / "README.md").read_text()
    assert "base_model_relation: merge" in card and "## Merge proof" in card and "| method | qlora |" in card
    # a file name is no Hub dataset: the card's `datasets:` holds Hub ids only, its Training data the file
    assert "\ndatasets:" not in card.split("\n---\n")[0] and "`train.jsonl`" in card.split("## Training data")[1]
    assert (out / "training_data.json").is_file()
    assert json.loads((out / "export_report.json").read_text())["passed"] is True


def test_a_perturbed_weight_fails_the_proof_and_nothing_is_written(runs, tmp_path, monkeypatch):
    """One merged weight off by noise of half its spread: the proof fails, the target is not
    created, no temporary folder is left, and the report beside the target says why."""
    from qvq_tune.export import merge as merge_module
    from qvq_tune.export.run import ExportFailed, MergeRequest, export_merge, failure_report_path
    original = merge_module.merged_tensor

    def faulty(name, tensor, plan, dtype, owned=False):
        out = original(name, tensor, plan, dtype, owned=owned)
        if name == "model.layers.1.mlp.down_proj.weight":
            noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
            out = (out.float() + 0.5 * out.float().std() * noise).to(dtype)
        return out
    monkeypatch.setattr(merge_module, "merged_tensor", faulty)
    out = tmp_path / "exports" / "merged"
    with pytest.raises(ExportFailed, match="failed its check against base \\+ adapter") as e:
        export_merge(MergeRequest(out=out, run=runs["lora"].run_dir))
    assert "\n" not in str(e.value) and str(out) in str(e.value)
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged.export_report.json"]
    report = json.loads(failure_report_path(out).read_text())
    assert report["passed"] is False and report["proof"]["reasons"]
    proof = report["proof"]
    assert proof["vs_base_plus_adapter"]["max_abs_logit_diff"] > proof["tolerance"]["max_abs_logit_diff"]
    monkeypatch.setattr(merge_module, "merged_tensor", original)        # the same export, unperturbed, passes
    export_merge(MergeRequest(out=out, run=runs["lora"].run_dir))
    assert (out / "model.safetensors").is_file() and not failure_report_path(out).exists()


def test_an_adapter_key_that_matches_no_base_weight_is_refused(runs, tmp_path):
    from qvq_tune.export.run import MergeRequest, export_merge
    adapter = shutil.copytree(runs["lora"].run_dir / "adapter", tmp_path / "adapter")
    tensors = load_file(adapter / "adapter_model.safetensors")
    stray = "base_model.model.model.language_model.layers.0.self_attn.qkv_proj"
    tensors[f"{stray}.lora_A.weight"] = torch.zeros(16, 128)
    tensors[f"{stray}.lora_B.weight"] = torch.zeros(128, 16)
    save_file(tensors, adapter / "adapter_model.safetensors")
    out = tmp_path / "merged"
    with pytest.raises(UserError, match="qkv_proj.weight' matches no weight of the base") as e:
        export_merge(MergeRequest(out=out, base=runs["lora"].model, adapter=adapter, data=runs["lora"].data.train))
    assert "adapter_model.safetensors" in str(e.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [adapter]


def test_existing_target_is_kept_without_force_and_replaced_with_it(runs, tmp_path):
    from qvq_tune.export.run import MergeRequest, export_merge
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="the target exists; pass --force"):
        export_merge(MergeRequest(out=out, run=runs["lora"].run_dir))
    assert (out / "keep.txt").read_text() == "mine"
    export_merge(MergeRequest(out=out, run=runs["lora"].run_dir, force=True))
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_refuses_when_the_disk_is_too_small(runs, tmp_path, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    from qvq_tune.export.run import MergeRequest, export_merge
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 1 << 20))
    with pytest.raises(UserError, match="not enough free disk space"):
        export_merge(MergeRequest(out=tmp_path / "m", run=runs["lora"].run_dir))
    assert not (tmp_path / "m").exists()


def test_names_resolve_across_layouts_in_both_directions():
    from qvq_tune.export.names import NameIndex
    from qvq_tune.models.registry import WEIGHT_PREFIX_ALIASES
    legacy = NameIndex(["model.layers.0.mlp.up_proj.weight", "visual.blocks.0.attn.qkv.weight", "lm_head.weight"],
                       WEIGHT_PREFIX_ALIASES)
    assert legacy.resolve("model.language_model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert legacy.resolve("model.visual.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    assert legacy.resolve("language_model.model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert legacy.resolve("model.layers.0.mlp.down_proj.weight") is None
    tree = NameIndex(["model.language_model.layers.0.mlp.up_proj.weight", "model.visual.merger.mlp.0.weight"],
                     WEIGHT_PREFIX_ALIASES)
    assert tree.resolve("model.layers.0.mlp.up_proj.weight") == "model.language_model.layers.0.mlp.up_proj.weight"
    assert tree.resolve("visual.merger.mlp.0.weight") == "model.visual.merger.mlp.0.weight"
    both = NameIndex(["model.layers.0.x.weight", "model.language_model.layers.0.x.weight"], WEIGHT_PREFIX_ALIASES)
    with pytest.raises(ValueError, match="several"):
        both.resolve("language_model.layers.0.x.weight")


def test_without_data_the_proof_uses_synthetic_images_built_with_the_bases_processor(runs, tmp_path):
    from qvq_tune.export.run import MergeRequest, export_merge
    recipe = runs["lora"]
    report = export_merge(MergeRequest(out=tmp_path / "m", base=recipe.model, adapter=recipe.run_dir / "adapter"))
    assert report["proof"]["passed"] and report["proof"]["samples"] == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_merge_equals_peft_for_every_family(family, tiny_model, tmp_path):
    """Every family's tiny checkpoint (qwen2_vl / qwen2_5_vl saved in the legacy layout,
    qwen3_vl / qwen3_vl_moe in the module tree, MoE experts stored transposed), an adapter
    on the language model and the vision tower: the merged fp32 folder reloads to PEFT's merge."""
    from qvq_tune.export.adapter import Adapter
    from qvq_tune.export.merge import base_shards, plan_merge, stream_merge
    from qvq_tune.models.registry import get_family
    base = tiny_model(family)
    adapter = make_adapter(base, tmp_path / "adapter", vision=True, family=family)
    out = shutil.copytree(base, tmp_path / "merged", ignore=shutil.ignore_patterns("model*.safetensors*"))
    shards = base_shards(base)
    plan = plan_merge(Adapter.load(adapter), shards, get_family(family).weight_prefix_aliases)
    assert any(".visual." in n or n.startswith("visual.") for n in plan.lora)
    stream_merge(base, shards, plan, out, "float32")
    expected, merged = peft_merged(base, adapter), reloaded(out)
    assert merged.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(merged[name], expected[name], atol=1e-6, rtol=1e-5), name


def test_rslora_merge_equals_peft_merge(tiny_model, tmp_path):
    """rsLoRA scales the product by alpha / sqrt(r), not alpha / r: the streamed merge of an
    rsLoRA adapter reloads to PEFT's own merge_and_unload, and would not with the plain scale."""
    from qvq_tune.export.adapter import Adapter
    from qvq_tune.export.merge import base_shards, plan_merge, stream_merge
    from qvq_tune.models.registry import get_family
    base = tiny_model("qwen2_vl")
    adapter = make_adapter(base, tmp_path / "rslora", use_rslora=True)           # r 16, alpha 32: scale 8, not 2
    loaded = Adapter.load(adapter)
    assert {pair.scale for pair in loaded.pairs.values()} == {32 / 16 ** 0.5}
    out = shutil.copytree(base, tmp_path / "merged", ignore=shutil.ignore_patterns("model*.safetensors*"))
    shards = base_shards(base)
    stream_merge(base, shards, plan_merge(loaded, shards, get_family("qwen2_vl").weight_prefix_aliases), out,
                 "float32")
    expected, merged, original = peft_merged(base, adapter), reloaded(out), reloaded(base)
    changed = [n for n in expected if not torch.equal(expected[n], original[n])]
    assert len(changed) == 14
    for name in expected:
        assert torch.allclose(merged[name], expected[name], atol=1e-6, rtol=1e-5), name
    plain = {n: original[n] + (expected[n] - original[n]) * (2 / 8) for n in changed}   # alpha / r instead
    assert all(not torch.allclose(merged[n], plain[n], atol=1e-4) for n in changed)


def test_a_dora_adapter_is_refused_before_anything_is_written(tiny_model, tmp_path):
    """The streamed merge adds scale * B @ A; a DoRA adapter also rescales each weight by its
    magnitude vector, which that sum does not do: refused, naming the key, nothing written."""
    from qvq_tune.export.run import MergeRequest, export_merge
    base = tiny_model("qwen2_vl")
    adapter = make_adapter(base, tmp_path / "dora", use_dora=True)
    exports = tmp_path / "exports"
    with pytest.raises(UserError, match="a DoRA adapter .* cannot be merged by the streamed merge") as e:
        export_merge(MergeRequest(out=exports / "merged", base=base, adapter=adapter))
    assert e.value.key == "use_dora" and "\n" not in str(e.value)
    assert not exports.exists()
