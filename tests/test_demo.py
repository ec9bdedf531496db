"""The end-to-end demo, short: every stage runs for real (ZeRO-3 across 2 processes included).

The full demo (`qvq-tune demo`) is the acceptance run; this checks the pipeline and its
report with a few steps. The tiny base it uses is the real cached one, whose own
pre-training report must show it reads images.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def tiny_base():
    from qvq_tune.models.base import REPORT_FILE, ensure_tiny_base
    path = ensure_tiny_base(progress=False)
    return path, json.loads((path / REPORT_FILE).read_text())


def test_tiny_base_reads_images(tiny_base):
    _, report = tiny_base
    acc = report["accuracy"]
    for kind, chance in (("colour", 1 / 6), ("shape", 1 / 3), ("count", 1 / 4)):
        assert acc[kind] >= 0.9, (kind, acc)
        assert acc[f"blank_{kind}"] <= chance + 0.25, (kind, acc)
    assert report["total_seconds"] < 600


@pytest.mark.slow
def test_short_demo_end_to_end(tmp_path, tiny_base):
    from qvq_tune.demo import DemoConfig, run_demo
    report = run_demo(DemoConfig(out=str(tmp_path / "demo"), train_size=160, test_size=24, steps=20,
                                 per_device_batch_size=8, max_new_tokens=48))
    for key in ("base_accuracy", "tuned_accuracy", "tuned_blank_image_accuracy", "train_loss_first",
                "train_loss_last", "wall_seconds"):
        assert key in report, key
    assert report["world_size"] == 2 and report["train_steps"] == 20
    assert report["train_loss_last"] < 0.75 * report["train_loss_first"]
    assert report["zero3_partition"]["local_numel"] < report["zero3_partition"]["full_numel"]
    assert report["merge_check"]["passed"] and report["merge_check"]["adapter_effect"] > 0
    out = tmp_path / "demo"
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "report.png").stat().st_size > 1000
    assert (out / "export" / "merged" / "model.safetensors").is_file()
    rows = [json.loads(l) for l in (out / "eval" / "tuned.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all({"reply", "predicted", "reference", "correct"} <= set(r) for r in rows)
