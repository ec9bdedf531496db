"""Every example in data_templates/ builds end to end with `qvq-tune data build`, losing nothing."""

from __future__ import annotations

import json

import pytest

from qvq_tune.cli.main import main

from .conftest import REPO

TEMPLATES = REPO / "data_templates"
CASES = {
    "native.jsonl": [], "native_dpo.jsonl": [], "sharegpt.json": [], "sharegpt_dpo.json": [],
    "llava.json": [], "messages.jsonl": [], "messages_dpo.jsonl": [], "swift.jsonl": [],
    "custom_columns.jsonl": ["--columns", "question=problem,answer=solution,images=image_path"],
    "llamafactory_v1.jsonl": [], "llamafactory_v1_dpo.jsonl": [], "swift_conversation.jsonl": [],
    "reasoning_fields.jsonl": [], "tools.jsonl": [],
}


def test_every_template_file_is_covered():
    shipped = {p.name for p in TEMPLATES.iterdir() if p.suffix in (".json", ".jsonl")}
    assert shipped == set(CASES)


def _records(path) -> int:
    if path.suffix == ".jsonl":
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    return len(json.loads(path.read_text()))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_template_builds_with_nothing_quarantined(name, family, tiny_model, tmp_path):
    out = tmp_path / "out"
    argv = ["data", "build", "--input", str(TEMPLATES / name), "--model", str(tiny_model(family)),
            "--out", str(out), "--workers", "1", *CASES[name]]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    n = _records(TEMPLATES / name)
    assert report["input_records"] == n
    assert report["quarantined"] == 0, (out / "quarantine.jsonl").read_text()
    assert report["kept"] == n
    kind = "preference" if "dpo" in name else "dataset"
    assert (out / kind / "dataset_info.json").is_file()
