"""The tiny base and the end-to-end demo, short: every stage runs for real (ZeRO-3 across
2 processes included), and the figures are measured here, not read back from a cache.

The full demo (`qvq-tune demo`) is the acceptance run; this checks the pipeline with a
short training run that must still show a real lift.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def tiny_base():
    """Built in this test run's own cache (conftest points QVQ_TUNE_CACHE at a fresh folder)."""
    from qvq_tune.tiny.pretrain import ensure_tiny_base
    return ensure_tiny_base()


def test_tiny_base_reads_images(tiny_base, tmp_path):
    """Re-measured on fresh held-out scenes (a seed the build never used): near-perfect on
    real images, near chance on blank ones (chance: 1/6 colour, 1/3 shape, 1/4 count)."""
    from qvq_tune.tiny.pretrain import CHANCE, CHECKED_KINDS, caption_accuracy
    acc = caption_accuracy(tiny_base, 60, "test-suite", tmp_path)
    for kind in CHECKED_KINDS:
        assert acc[kind] >= 0.9, (kind, acc)
        # 60 blank questions per kind: chance + 0.25 is > 4 standard deviations above chance.
        assert acc[f"blank_{kind}"] <= CHANCE[kind] + 0.25, (kind, acc)


def sampled_defect_rate(folder, replies: int) -> float:
    """Share of the sampled replies the evaluator wrote that show a defect the noisy data teaches."""
    from qvq_tune.synth.tasks import taught_defects
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == replies
    return sum(bool(taught_defects(r["reply"])) for r in rows) / len(rows)


def adapter_effect(out, report) -> float:
    """Mean |logits(base + adapter) - logits(base)| on the export proof's samples, recomputed with
    PEFT's own adapter loading on the fp32 base (apart from the proof code)."""
    import torch
    from peft import PeftModel

    from qvq_tune.export.sources import Sources, proof_batch
    from qvq_tune.models.loading import load_model
    src = Sources.resolve(run=out / report["exported_run"], data=out / "data" / "test")
    batch = proof_batch(src, report["merge_check"]["samples"])
    batch.pop("labels")
    model = PeftModel.from_pretrained(load_model(src.base), str(src.adapter_dir)).eval()
    with torch.no_grad():
        tuned = model(**batch).logits.float()
        with model.disable_adapter():
            plain = model(**batch).logits.float()
    return (tuned - plain).abs()[batch["attention_mask"].bool()].mean().item()


@pytest.mark.slow
def test_short_demo_end_to_end(tmp_path, tiny_base):
    from qvq_tune.demo import DemoConfig, run_demo
    # Clean traces here (the full demo's 30% defective ones slow learning past what 150 steps
    # reach), and a DPO stage of a few steps: the stage runs end to end, its effect is the
    # full demo's to show.
    report = run_demo(DemoConfig(out=str(tmp_path / "demo"), train_size=320, test_size=48, steps=150,
                                 per_device_batch_size=8, max_new_tokens=48, defect_rate=0.0, dpo_steps=10,
                                 defect_samples=2))
    assert report["world_size"] == 2 and report["train_steps"] == 150 and report["dpo_steps"] == 10
    assert report["exported_run"] == "dpo" and report["dpo_pairs"] > 0
    out = tmp_path / "demo"
    for stage, key in (("tuned_sampled", "sft_defect_rate"), ("dpo_sampled", "dpo_defect_rate")):
        assert report[key] == sampled_defect_rate(out / "eval" / stage, replies=48 * 2), key
    assert report["train_loss_last"] < 0.25 * report["train_loss_first"]
    assert report["zero3_partition"]["local_numel"] < report["zero3_partition"]["full_numel"]
    assert report["merge_check"]["passed"]
    assert report["merge_check"]["adapter_effect"] == pytest.approx(adapter_effect(out, report), rel=1e-4)
    # The tiny base carries the Qwen LICENSE AGREEMENT (as QVQ does): the export went through the gate.
    assert report["license"]["license"] == "qwen" and report["license"]["requires_acceptance"]
    assert report["merge_check"]["vs_4bit_base_plus_adapter"] is not None          # QLoRA: reported apart
    assert report["vllm_serve"].startswith("vllm serve ")
    # A real lift that comes from reading the image. Measured with this configuration over
    # seeds 0-2: base 0.0 / 0.0 / 0.0, tuned 0.71 / 0.75 / 0.63, blank images 0.13 / 0.0 / 0.0,
    # merged bf16 0.63 / 0.50 / 0.54. 0.4 is > 3 binomial standard deviations (48 samples)
    # below the lowest tuned figure; bf16 rounding costs the merged model some points.
    assert report["tuned_accuracy"] >= report["base_accuracy"] + 0.4
    assert report["tuned_accuracy"] >= report["tuned_blank_image_accuracy"] + 0.4
    assert report["merged_accuracy"] >= report["base_accuracy"] + 0.25
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "report.png").stat().st_size > 1000
    merged = out / "export" / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "SHA256SUMS").is_file()
    assert (merged / "NOTICE").read_text().startswith("Qwen is licensed under the Qwen LICENSE AGREEMENT")
    assert "**Built with Qwen.**" in (merged / "README.md").read_text()
    rows = [json.loads(line) for line in (out / "eval" / "tuned" / "samples.jsonl").read_text().splitlines()]
    real = [r for r in rows if r["condition"] == "real"]
    assert len(real) == 48 and all({"reply", "extracted", "reference", "correct", "diagnostics"} <= set(r) for r in rows)
    assert round(sum(r["correct"] for r in real) / 48, 4) == report["tuned_accuracy"]
    # the reasoning diagnostics before and after tuning, side by side in the report
    before_after = {r["metric"]: r for r in report["before_after"]}
    for name in ("accuracy", "truncated_rate", "no_answer_rate", "loop_rate", "language_mix_rate", "mean_tokens"):
        assert before_after[name]["a"] == report["diagnostics"]["base"][name]
        assert before_after[name]["b"] == report["diagnostics"]["tuned"][name]
    assert "| truncated_rate |" in (out / "eval" / "before_after.md").read_text()
    exports_carry_the_whole_chain(out)


def exports_carry_the_whole_chain(out) -> None:
    """Both exports list the tiny base's synthetic pre-training, the SFT data and the DPO pairs,
    with the counts of their build reports (also run on a `qvq-tune demo` folder by hand)."""
    from pathlib import Path

    from huggingface_hub import ModelCard
    out = Path(out)
    reports = {split: json.loads((out / "data" / split / "report.json").read_text()) for split in ("train", "dpo_train")}
    for export in ("merged", "vllm_adapter"):
        doc = json.loads((out / "export" / export / "training_data.json").read_text())
        base, sft, dpo = doc["stages"]
        assert (base["name"], sft["objective"], dpo["objective"]) == ("tiny-qvq-base pre-training", "sft", "dpo")
        (captions,) = base["datasets"]
        assert captions["synthetic_share"] == 1.0 and captions["kept"] == base["samples"] > 0
        for stage, split in ((sft, "train"), (dpo, "dpo_train")):
            (data,) = stage["datasets"]
            report = reports[split]
            assert (data["records"], data["kept"], data["quarantined"], data["build_fingerprint"]) == \
                (report["input_records"], report["kept"], report["quarantined"], report["fingerprint"]), split
            assert data["quarantine_reasons"] == report["quarantine_reasons"] and data["synthetic_share"] == 1.0
        assert dpo["starts_from"] == "the adapter of stage 2 (train)"
        card = ModelCard.load(out / "export" / export / "README.md")
        assert "### 2. List of data sources" in card.text and "tiny-qvq-base pre-training" in card.text
