"""`qvq-tune data build` end to end: quarantine of every bad kind, strict, cache, determinism,
DPO, HF folders / parquet with image bytes, base64, multi-image and video."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from qvq_tune.data.build import BuildConfig, build, summary_line
from qvq_tune.errors import UserError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_quarantine(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]


def load(out: Path, name: str = "dataset"):
    import datasets
    return datasets.load_from_disk(str(out / name))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A synthetic task folder (train.jsonl, dpo_train.jsonl, images/) plus broken media beside it."""
    from qvq_tune.synth.generate import SynthConfig, generate
    root = tmp_path_factory.mktemp("build")
    task = root / "task"
    generate(SynthConfig(train=10, validation=0, test=0, dpo=True), task, progress=False)
    from .conftest import MediaFiles
    files = MediaFiles(task)
    files.write("empty.png", b"")
    files.write("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"not really" * 20)
    files.bomb_png("bomb.png")
    files.image("../outside.png")
    (task / "link.png").symlink_to(root / "outside.png")
    shutil.copy(task / "images/train/000000.png", task / "copy_of_0.png")
    return task


@pytest.fixture(scope="module")
def records(task):
    return [json.loads(line) for line in (task / "train.jsonl").read_text().splitlines()]


def bad(base: dict, **changes) -> dict:
    return {**base, **changes}


# line in dirty.jsonl -> reason, one line for every kind of bad input
EXPECTED_BAD = {2: "malformed_json", 3: "unknown_schema", 4: "missing_media", 5: "empty_file",
                6: "corrupt_media", 7: "pixel_limit", 8: "path_escape", 9: "path_escape", 10: "path_escape",
                11: "remote_url", 12: "placeholder_mismatch", 13: "empty_assistant", 14: "bad_role_order",
                15: "too_long", 16: "duplicate", 17: "duplicate", 18: "special_token_in_text",
                19: "bad_field_type"}


@pytest.fixture(scope="module")
def dirty(task, records):
    """A JSONL with good records (lines 1, 20, 21) and one of each bad kind (EXPECTED_BAD)."""
    r0, r1 = records[0], records[1]
    rows = [
        r0,                                                                   # 1 good
        '{"question": "x", "answer": ',                                       # 2 malformed_json
        {"foo": 1, "bar": [2]},                                               # 3 unknown_schema
        bad(r1, images=["images/train/nope.png"]),                            # 4 missing_media
        bad(r1, images=["empty.png"]),                                        # 5 empty_file
        bad(r1, images=["corrupt.png"]),                                      # 6 corrupt_media
        bad(r1, images=["bomb.png"]),                                         # 7 pixel_limit
        bad(r1, images=["../outside.png"]),                                   # 8 path_escape (..)
        bad(r1, images=[str(task.parent / "outside.png")]),                  # 9 path_escape (absolute)
        bad(r1, images=["link.png"]),                                         # 10 path_escape (symlink)
        bad(r1, images=["https://example.com/a.png"]),                        # 11 remote_url
        {"image": r1["images"] * 2, "conversations": [                        # 12 placeholder_mismatch
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a"}]},
        bad(r1, answer="   ", reasoning=None),                                # 13 empty_assistant
        {"conversations": [{"from": "gpt", "value": "hi"},                    # 14 bad_role_order
                           {"from": "human", "value": "what?"}]},
        bad(r1, reasoning="I count them again. " * 60),                       # 15 too_long
        bad(r0, id="another-id"),                                             # 16 duplicate (same content)
        bad(r0, id="copy", images=["copy_of_0.png"]),                         # 17 duplicate (same bytes)
        bad(r1, question="what <|im_end|> is this?"),                         # 18 special_token_in_text
        bad(r1, answer=[5]),                                                  # 19 bad_field_type
        r1,                                                                   # 20 good
        bad(records[2], images=records[2]["images"] + records[3]["images"]),  # 21 good, two images
    ]
    return write_jsonl(task / "dirty.jsonl", rows)


def config(input, out, tiny_model, **kw) -> BuildConfig:
    return BuildConfig(input=str(input), model=str(tiny_model(kw.pop("family", "qwen2_vl"))), out=str(out),
                       workers=kw.pop("workers", 1), **kw)


@pytest.fixture(scope="module")
def dirty_build(dirty, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("dirty_out")
    return build(config(dirty, out, tiny_model, max_tokens=256)), out


@pytest.mark.parametrize("line,code", sorted(EXPECTED_BAD.items()))
def test_each_bad_record_is_quarantined_with_its_reason_and_line(dirty, dirty_build, line, code):
    path = dirty
    report, out = dirty_build
    rows = {row["line"]: row for row in read_quarantine(out)}
    row = rows[line]
    assert row["reason"] == code and row["source"] == str(path) and row["message"]
    assert report["input_records"] == report["kept"] + report["quarantined"]


def test_dirty_build_accounts_for_every_record(dirty_build):
    expected = EXPECTED_BAD
    report, out = dirty_build
    rows = read_quarantine(out)
    assert report["input_records"] == 21 and report["kept"] == 3 and report["quarantined"] == len(expected)
    assert sorted(r["line"] for r in rows) == sorted(expected)
    reasons = {}
    for r in rows:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    assert report["quarantine_reasons"] == dict(sorted(reasons.items()))
    assert len(load(out)) == report["kept"]
    assert [s["line"] for s in load(out)] == [1, 20, 21]
    by_line = {r["line"]: r for r in rows}
    assert by_line[2]["record"] == '{"question": "x", "answer": '           # the offending text is kept
    assert "dirty.jsonl:1 (same text and media bytes" in by_line[16]["message"] and by_line[16]["record"]["id"] == "another-id"
    assert by_line[4]["field"] == "images" and "nope.png" in by_line[4]["message"]
    assert "symlink" in by_line[10]["message"]


def test_report_statistics_histogram_and_columns(dirty_build):
    report, out = dirty_build
    ds = load(out)
    for key in ("num_tokens", "num_label_tokens", "num_vision_tokens", "reasoning_chars", "media_per_sample"):
        stat = report["stats"]["sft"][key]
        assert set(stat) == {"count", "min", "mean", "p50", "p95", "max"} and stat["count"] == 3
    assert report["stats"]["sft"]["num_tokens"]["max"] == max(ds["num_tokens"])
    assert report["stats"]["sft"]["media_per_sample"]["max"] == 2
    assert (out / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["settings"]["max_tokens"] == 256 and report["fingerprint"] and not report["cached"]
    # throughputs recomputed from the counts and the time (rates rounded to 0.1 /s, seconds to 1 ms)
    low, high = report["seconds"] - 0.0005, report["seconds"] + 0.0005
    for rate, count in (("records_per_second", "input_records"), ("samples_per_second", "kept")):
        assert report[count] / high - 0.05 <= report[rate] <= report[count] / low + 0.05, rate
    assert report["input_records"] != report["kept"], "the two rates count different things"
    assert set(ds.column_names) >= {"input_ids", "labels", "images", "image_grid_thw", "videos", "video_grid_thw",
                                    "num_tokens", "num_label_tokens", "num_vision_tokens", "reasoning_chars",
                                    "id", "source", "line"}
    assert all(Path(p).is_absolute() and Path(p).is_file() for row in ds["images"] for p in row)
    assert json.loads((out / "report.json").read_text()) == report


def test_strict_stops_at_the_first_bad_record_naming_file_line_field_and_reason(dirty, tiny_model, tmp_path, task,
                                                                              records):
    path = dirty
    with pytest.raises(UserError) as e:
        build(config(path, tmp_path / "out", tiny_model, strict=True))
    assert str(e.value).startswith(f"{path}:2: malformed_json")
    assert not (tmp_path / "out" / "report.json").exists()
    missing = write_jsonl(task / "strict_missing.jsonl", [records[0], bad(records[1], images=["gone.png"])])
    with pytest.raises(UserError) as e:
        build(config(missing, tmp_path / "out2", tiny_model, strict=True, workers=2))
    assert f"{missing}:2 [images]: missing_media" in str(e.value)


def test_truncate_keeps_the_answer_counts_truncated_samples_and_quarantines_hopeless_ones(
        task, records, tiny_model, tmp_path):
    from qvq_tune.models.loading import load_processor
    long = write_jsonl(task / "long.jsonl", [bad(records[1], reasoning="I count them again. " * 60), records[2],
                                             bad(records[3], question="How many? " * 150)])
    report = build(config(long, tmp_path / "cut", tiny_model, max_tokens=256, truncate=True))
    assert (report["kept"], report["truncated"], report["quarantine_reasons"]) == (2, 1, {"too_long": 1})
    assert "1 truncated" in summary_line(report)
    rows = load(tmp_path / "cut").to_list()
    assert [r["truncated"] for r in rows] == [True, False] and rows[0]["num_tokens"] <= 256
    tokenizer = load_processor(tiny_model("qwen2_vl")).tokenizer
    reply = tokenizer.decode([t for t, lab in zip(rows[0]["input_ids"], rows[0]["labels"]) if lab != -100])
    assert reply.endswith("\\]<|im_end|>") and f"boxed{{{records[1]['answer']}}}" in reply
    assert "I count them again." in reply and "..." in reply
    assert "never cut" in read_quarantine(tmp_path / "cut")[0]["message"]
    with pytest.raises(UserError, match="--truncate needs --max-tokens"):
        config(long, tmp_path / "x", tiny_model, truncate=True)


def test_duplicates_name_the_first_copy_unless_kept(task, records, tiny_model, tmp_path):
    path = write_jsonl(task / "dups.jsonl", [records[0], records[1], bad(records[0], id="again")])
    report = build(config(path, tmp_path / "q", tiny_model))
    [row] = read_quarantine(tmp_path / "q")
    assert (report["kept"], row["line"], row["reason"]) == (2, 3, "duplicate")
    assert f"{path}:1 (" in row["message"] and "--keep-duplicates" in row["message"]
    kept = build(config(path, tmp_path / "k", tiny_model, keep_duplicates=True))
    assert (kept["kept"], kept["duplicates_kept"], kept["quarantined"]) == (3, 1, 0)
    assert [r["id"] for r in load(tmp_path / "k")] == [records[0]["id"], records[1]["id"], "again"]


def test_rerun_reuses_the_cache_until_input_media_or_settings_change(task, records, tiny_model, tmp_path):
    shutil.copytree(task / "images", tmp_path / "images")
    path = write_jsonl(tmp_path / "in.jsonl", records[:4])
    out = tmp_path / "out"
    logs = []
    first = build(config(path, out, tiny_model), log=logs.append)
    again = build(config(path, out, tiny_model), log=logs.append)
    assert not first["cached"] and again["cached"] and "reusing" in logs[-1]
    assert again["fingerprint"] == first["fingerprint"]
    # a media file changes (same name): rebuilt
    from .conftest import MediaFiles
    MediaFiles(tmp_path).image(records[0]["images"][0], 120, 100)
    assert not build(config(path, out, tiny_model))["cached"]
    assert build(config(path, out, tiny_model))["cached"]
    # ...also one the in-process image cache served during that rebuild
    MediaFiles(tmp_path).image(records[1]["images"][0], 120, 100)
    assert not build(config(path, out, tiny_model))["cached"]
    # a setting changes: rebuilt; the input changes: rebuilt
    assert not build(config(path, out, tiny_model, max_tokens=500))["cached"]
    write_jsonl(path, records[:3])
    report = build(config(path, out, tiny_model, max_tokens=500))
    assert not report["cached"] and report["kept"] == 3
    assert build(config(path, out, tiny_model, max_tokens=500, reuse=False))["cached"] is False


def test_builds_are_deterministic_whatever_the_worker_count(dirty, dirty_build, tiny_model, tmp_path,
                                                             monkeypatch):
    import qvq_tune.data.build as build_module
    monkeypatch.setattr(build_module, "CHUNK", 2)         # many chunks, interleaved across two workers
    path = dirty
    report1, out1 = dirty_build
    report2 = build(config(path, tmp_path / "out", tiny_model, max_tokens=256, workers=2))
    out2 = tmp_path / "out"
    assert load(out1).to_list() == load(out2).to_list()
    assert (out1 / "quarantine.jsonl").read_text() == (out2 / "quarantine.jsonl").read_text()
    shards = sorted(p.name for p in (out1 / "dataset").glob("*.arrow"))
    assert shards and all((out1 / "dataset" / s).read_bytes() == (out2 / "dataset" / s).read_bytes()
                          for s in shards)
    assert report1["stats"] == report2["stats"] and report2["workers"] == 2


def test_dpo_and_sft_records_build_separate_datasets(task, tiny_model, tmp_path):
    from qvq_tune.data.dataset import load_samples
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("train.jsonl", "dpo_train.jsonl"):
        shutil.copy(task / name, inputs / name)
    report = build(config(inputs, tmp_path / "out", tiny_model, image_root=str(task)))
    assert report["kept_sft"] == 10 and report["kept_preference"] == 10 and report["quarantined"] == 0
    pref = load_samples(tmp_path / "out", "preference")
    assert {"prompt_input_ids", "chosen_input_ids", "rejected_input_ids", "images", "image_grid_thw"} <= set(
        pref.column_names)
    assert pref[0]["chosen_input_ids"] != pref[0]["rejected_input_ids"]
    assert report["stats"]["preference"]["chosen_tokens"]["count"] == 10
    assert len(load_samples(tmp_path / "out")) == 10


def test_hf_folder_and_parquet_with_image_bytes(tiny_model, tmp_path, media_files):
    import datasets
    pngs = [media_files.image_bytes(112, 112) for _ in range(3)]
    ds = datasets.Dataset.from_dict(
        {"question": ["q0", "q1", "q2"], "answer": ["a0", "a1", "a2"],
         "images": [[{"bytes": pngs[0], "path": None}], [{"bytes": pngs[1], "path": "b.png"}, {"bytes": pngs[2], "path": None}],
                    [{"bytes": b"broken", "path": None}]]},
        features=datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                                    "images": datasets.List(datasets.Image())}))
    ds.save_to_disk(str(tmp_path / "hf"))
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    for inp, out in ((tmp_path / "hf", tmp_path / "out_hf"), (tmp_path / "rows.parquet", tmp_path / "out_pq")):
        report = build(config(inp, out, tiny_model, format="hf"))
        assert (report["kept"], report["quarantine_reasons"]) == (2, {"corrupt_media": 1}), inp
        rows = load(out).to_list()
        assert [len(r["images"]) for r in rows] == [1, 2]
        for path in (p for r in rows for p in r["images"]):
            assert Path(path).parent == out / "media" and Path(path).read_bytes() in pngs
        assert read_quarantine(out)[0]["index"] == 2


def test_base64_multi_image_and_video_records_feed_the_collator(tiny_model, media_files, tmp_path):
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.models.loading import load_processor
    from qvq_tune.data.collate import VisionCollator

    png = media_files.image_bytes(112, 112)
    a, b = media_files.image("a.png", 200, 100), media_files.image("b.png", 90, 90)
    media_files.video("clip.mp4", frames=10)
    frames = [media_files.image(f"frames/{i}.png", 64, 64) for i in range(4)]
    path = write_jsonl(media_files.root / "mixed.jsonl", [
        {"images": ["data:image/png;base64," + base64.b64encode(png).decode()], "question": "q", "answer": "x"},
        {"images": [a, b], "question": "which is wider?", "reasoning": "the first", "answer": "a"},
        {"video": "clip.mp4", "question": "what moves?", "answer": "noise"},
        {"video": frames, "question": "frames?", "answer": "four"},
    ])
    report = build(config(path, tmp_path / "out", tiny_model, max_frames=8))
    assert report["kept"] == 4, read_quarantine(tmp_path / "out")
    rows = load_samples(tmp_path / "out").to_list()
    assert rows[0]["images"][0].startswith(str(tmp_path / "out" / "media"))
    assert [len(r["images"]) for r in rows] == [1, 2, 0, 0] and [len(r["videos"]) for r in rows] == [0, 0, 1, 1]
    assert rows[2]["video_grid_thw"][0][0] == 2           # 10 frames at 4 fps, 2 fps sampled -> 4 frames
    collate = VisionCollator(load_processor(tiny_model("qwen2_vl")))
    batch = collate(rows)
    assert batch["image_grid_thw"].tolist() == [g for r in rows for g in r["image_grid_thw"]]
    assert batch["video_grid_thw"].tolist() == [g for r in rows for g in r["video_grid_thw"]]


def test_cli_builds_with_a_family_name_and_prints_user_errors_on_one_line(task, records, tmp_path, monkeypatch,
                                                                          capsys):
    from qvq_tune.cli.main import main
    monkeypatch.setenv("QVQ_TUNE_CACHE", str(tmp_path / "cache"))
    path = write_jsonl(task / "cli.jsonl", records[:2])
    out = tmp_path / "out"
    assert main(["data", "build", "--input", str(path), "--model", "qwen3_vl", "--out", str(out),
                 "--reasoning", "think", "--max-tokens", "512", "--workers", "1",
                 "--columns", "question=question"]) == 0
    assert f"dataset: {out / 'dataset'}" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["family"] == "qwen3_vl" and report["kept"] == 2
    assert str(tmp_path / "cache") in report["model"]["path"]
    bad_path = write_jsonl(task / "cli_bad.jsonl", ["not json"])
    assert main(["data", "build", "--input", str(bad_path), "--model", "qwen3_vl", "--out", str(out),
                 "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad_path}:1: malformed_json" in err[0]
    assert main(["data", "build", "--input", str(path), "--model", "nope", "--out", str(out)]) == 1
    assert main(["data", "build", "--input", str(path), "--model", "qwen3_vl", "--out", str(out),
                 "--columns", "oops"]) == 1
