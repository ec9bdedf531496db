"""Sharded builds (`--num-shards N --shard-index I`) merged with `data merge` equal one unsharded build:
the same samples in the same order, the same quarantine, the same report counts."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from qvq_tune.data.build import BuildConfig, build
from qvq_tune.data.merge import merge
from qvq_tune.errors import UserError

COUNTS = ("input_records", "kept", "quarantined", "kept_sft", "kept_preference", "quarantine_reasons", "truncated",
          "duplicates_kept", "field_aliases", "reasoning_read_as", "stats")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two files whose records include duplicates within and across shards (of 3), a bad line,
    missing media, an embedded image (stored in the build's media folder) and a DPO pair."""
    from qvq_tune.synth.generate import SynthConfig, generate
    from .conftest import MediaFiles
    root = tmp_path_factory.mktemp("shards")
    generate(SynthConfig(train=9, validation=0, test=0, dpo=True), root, progress=False)
    r = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    dpo = json.loads((root / "dpo_train.jsonl").read_text().splitlines()[0])
    png = base64.b64encode(MediaFiles(root).image_bytes(64, 64)).decode()
    embedded = {"images": [f"data:image/png;base64,{png}"], "question": "What is drawn?", "answer": "noise"}
    (root / "in").mkdir()
    first = [r[0], r[1], r[2], {**r[0], "id": "copy-a"}, {**r[0], "id": "copy-b"}, '{"question": ', r[3],
             {**r[0], "id": "copy-c"}, embedded, dpo, {**r[4], "images": ["images/train/gone.png"]}]
    second = [r[5], {**embedded, "id": "again"}, r[6], {"problem": "How many?", "ground_truth": 3,
                                                         "image_path": r[7]["images"][0]}]
    for name, rows in (("a.jsonl", first), ("b.jsonl", second)):
        (root / "in" / name).write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in rows))
    return root


def run(inputs, tiny_model, out: Path, **kw) -> dict:
    return build(BuildConfig(input=str(inputs / "in"), model=str(tiny_model("qwen2_vl")), out=str(out),
                             image_root=str(inputs), workers=kw.pop("workers", 1), **kw))


def rows(out: Path, name: str) -> list[dict]:
    import datasets
    if not (out / name).is_dir():
        return []
    text = json.dumps(datasets.load_from_disk(str(out / name)).to_list())
    return json.loads(text.replace(str(out), "OUT"))            # media paths point into each build's folder


def _provenance(report: dict) -> dict:
    """A build's provenance without each file's local origin (the one per-build path)."""
    prov = report["provenance"]
    return {**prov, "sources": [{k: v for k, v in e.items() if k != "origin"} for e in prov["sources"]]}


def quarantine(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("keep_duplicates", [False, True])
def test_three_shards_merge_into_the_unsharded_build(inputs, tiny_model, tmp_path, keep_duplicates):
    whole = run(inputs, tiny_model, tmp_path / "whole", keep_duplicates=keep_duplicates)
    shards = [run(inputs, tiny_model, tmp_path / f"shard{i}", num_shards=3, shard_index=i, workers=1 + i % 2,
                  keep_duplicates=keep_duplicates) for i in range(3)]
    assert sum(s["input_records"] for s in shards) == whole["input_records"] == 15
    assert all(s["input_records"] == 5 for s in shards)           # record p goes to shard p % 3
    merged = merge([str(tmp_path / f"shard{i}") for i in (2, 0, 1)], tmp_path / "merged")
    assert {k: merged[k] for k in COUNTS} == {k: whole[k] for k in COUNTS}
    assert merged["input_records"] == merged["kept"] + merged["quarantined"]
    for name in ("dataset", "preference"):
        assert rows(tmp_path / "merged", name) == rows(tmp_path / "whole", name) != []
    assert quarantine(tmp_path / "merged") == quarantine(tmp_path / "whole")
    assert _provenance(merged) == _provenance(whole)                 # per file, cross-shard duplicates moved
    assert sum(e["quarantine_reasons"].get("duplicate", 0) for e in merged["provenance"]["sources"]) == \
        merged["quarantine_reasons"].get("duplicate", 0)
    if keep_duplicates:
        assert whole["duplicates_kept"] == 4 and "duplicate" not in whole["quarantine_reasons"]
        return
    assert whole["quarantine_reasons"] == {"duplicate": 4, "malformed_json": 1, "missing_media": 1}
    dups = {r["record_index"]: r for r in quarantine(tmp_path / "merged") if r["reason"] == "duplicate"}
    a = inputs / "in" / "a.jsonl"
    # 4 and 7 share shard 1: its own build named 4 as 7's first copy; the merge names line 1
    assert all(f"{a}:1 (" in dups[i]["message"] for i in (3, 4, 7)) and f"{a}:9 (" in dups[12]["message"]
    assert dups[4]["record"]["id"] == "copy-b"                                 # read back from the input
    assert dups[12]["record"].startswith('{"images": ["data:image/png;base64,')  # (a long one as an excerpt)
    for sample in rows(tmp_path / "merged", "dataset"):
        for path in sample["images"]:
            assert (tmp_path / "merged" / path.removeprefix("OUT/")).is_file() if path.startswith("OUT/") \
                else Path(path).is_file()


def test_merge_refuses_shards_that_do_not_belong_together(inputs, tiny_model, tmp_path, capsys):
    from qvq_tune.cli.main import main
    for i in range(2):
        run(inputs, tiny_model, tmp_path / f"s{i}", num_shards=2, shard_index=i)
    run(inputs, tiny_model, tmp_path / "other", num_shards=2, shard_index=1, max_tokens=4096)
    with pytest.raises(UserError, match=r"missing \[1\]"):
        merge([str(tmp_path / "s0")], tmp_path / "m")
    with pytest.raises(UserError, match="max_tokens"):
        merge([str(tmp_path / "s0"), str(tmp_path / "other")], tmp_path / "m")
    with pytest.raises(UserError, match="given twice"):
        merge([str(tmp_path / "s0"), str(tmp_path / "s0"), str(tmp_path / "s1")], tmp_path / "m")
    with pytest.raises(UserError, match="no report.json"):
        merge([str(tmp_path / "s0"), str(tmp_path / "nowhere")], tmp_path / "m")
    with pytest.raises(UserError, match="shard-index must be 0 .. 1"):
        BuildConfig(input=str(inputs / "in"), model="x", out=str(tmp_path / "x"), num_shards=2, shard_index=2)
    assert main(["data", "merge", str(tmp_path / "s0"), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing [1]" in err[0]
    assert main(["data", "merge", str(tmp_path / "s1"), str(tmp_path / "s0"), "--out", str(tmp_path / "m")]) == 0
    assert f"dataset: {tmp_path / 'm' / 'dataset'}" in capsys.readouterr().out
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["merged_from"] == [str(tmp_path / "s0"), str(tmp_path / "s1")]
    shutil.rmtree(tmp_path / "s1")
    with pytest.raises(UserError, match="no report.json"):
        merge([str(tmp_path / "s0"), str(tmp_path / "s1")], tmp_path / "m")
