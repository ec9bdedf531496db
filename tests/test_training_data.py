"""Provenance that travels with the model (issue 20): per-file provenance at build time, the
training-data summary of a run (inherited along start adapters), in every export (JSON and
the card's section), and `qvq-tune data summary`."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from .conftest import REPO, make_recipe

DIVINE = REPO / "tests" / "data" / "divine_comedy"       # a published HF dataset folder (card: apache-2.0)
DIVINE_HUB_ID = "hunterbown/divine-comedy-curriculum"


def _build(tiny_model, input_path, out, **kw) -> dict:
    from qvq_tune.data.build import BuildConfig, build
    return build(BuildConfig(input=str(input_path), model=str(tiny_model("qwen2_vl")), out=str(out),
                             reasoning="qvq", workers=1, **kw))


def _mixed_inputs(root: Path) -> Path:
    """inputs/synth (qvq-tune synth output: 6 records and its card) and inputs/plain/mine.jsonl (a
    record whose reasoning is half Chinese, an exact copy of it, a malformed line; no card)."""
    from qvq_tune.synth.generate import SynthConfig, generate
    inputs = root / "inputs"
    generate(SynthConfig(train=6, validation=0, test=0, dpo=False), inputs / "synth", progress=False)
    for name in ("validation.jsonl", "test.jsonl", "manifest.json"):
        (inputs / "synth" / name).unlink()
    plain = inputs / "plain"
    plain.mkdir()
    Image.new("RGB", (112, 112), (200, 30, 30)).save(plain / "red.png")
    good = {"images": ["red.png"], "question": "What colour is it?", "reasoning": "The square is red. 红色的方块。",
            "answer": "red"}
    (plain / "mine.jsonl").write_text(json.dumps(good, ensure_ascii=False) + "\n"
                                      + json.dumps(good, ensure_ascii=False) + "\n{not json\n", encoding="utf-8")
    return inputs


def test_a_build_records_each_files_provenance(tiny_model, tmp_path):
    inputs = _mixed_inputs(tmp_path)
    report = _build(tiny_model, inputs, tmp_path / "out")
    prov = report["provenance"]
    by_path = {e["path"]: e for e in prov["sources"]}
    assert sorted(by_path) == ["plain/mine.jsonl", "synth/train.jsonl"]          # relative to the input
    mine, synth = by_path["plain/mine.jsonl"], by_path["synth/train.jsonl"]
    assert mine["sha256"] == hashlib.sha256((inputs / "plain" / "mine.jsonl").read_bytes()).hexdigest()
    assert (mine["records"], mine["kept"], mine["quarantined"]) == (3, 1, 2)
    assert mine["quarantine_reasons"] == {"duplicate": 1, "malformed_json": 1}
    assert mine["record_formats"] == {"native": 2} and mine["file_type"] == "jsonl"
    assert set(mine["reasoning_scripts"]) == {"latin", "cjk"} and sum(mine["reasoning_scripts"].values()) == \
        pytest.approx(1, abs=1e-3)
    assert (mine["synthetic"], mine["license"]) == (False, None)
    assert synth["synthetic"] and synth["reasoning_scripts"] == {"latin": 1.0}
    assert (synth["license"], synth["license_from"]) == ("apache-2.0", "dataset card synth/README.md")
    # the per-file figures add up to the build's own and to the samples written
    from datasets import load_from_disk
    samples = load_from_disk(str(tmp_path / "out" / "dataset"))
    for key, total in (("records", report["input_records"]), ("kept", report["kept"]),
                       ("quarantined", report["quarantined"]), ("tokens", sum(samples["num_tokens"])),
                       ("image_tokens", sum(samples["num_vision_tokens"])),
                       ("images", sum(len(i) for i in samples["images"]))):
        assert sum(e[key] for e in prov["sources"]) == total, key
    assert {"filter": "exact duplicates", "reason": "duplicate", "removed": 1} in prov["filters"]
    # --data-license names the licence of every file and is part of what the build decides
    again = _build(tiny_model, inputs, tmp_path / "out", data_license="CC-BY-4.0")
    assert not again["cached"]
    assert {e["license"] for e in again["provenance"]["sources"]} == {"CC-BY-4.0"}


def test_the_card_of_a_published_dataset_folder_gives_its_licence(tiny_model, tmp_path):
    report = _build(tiny_model, DIVINE, tmp_path / "divine", data_name=DIVINE_HUB_ID)
    (source,) = report["provenance"]["sources"]
    assert (source["path"], source["license"], source["license_from"]) == \
        ("circle_9/valid.jsonl", "apache-2.0", "dataset card README.md")
    assert source["card_name"] == "The Divine Comedy Curriculum" and source["kept"] == 3
    assert source["record_formats"] == {"sharegpt": 3} and source["reasoning_scripts"]["latin"] > 0.99
    assert report["provenance"]["hub_id"] == DIVINE_HUB_ID


# ---- a chain: SFT (validated on the published folder) -> DPO -> exports --------------------------
@pytest.fixture(scope="module")
def chain(tiny_model, tmp_path_factory):
    """SFT on synthetic records (validated on the divine-comedy folder), then DPO from its adapter."""
    from qvq_tune.synth.generate import SynthConfig, generate
    from qvq_tune.train.run import train
    root = tmp_path_factory.mktemp("chain")
    generate(SynthConfig(train=24, validation=0, test=0, dpo=True), root / "rawsynth", progress=False)
    built = {"sft": _build(tiny_model, root / "rawsynth" / "train.jsonl", root / "sftbuild-q7"),
             "val": _build(tiny_model, DIVINE, root / "valbuild-q7", data_name=DIVINE_HUB_ID),
             "dpo": _build(tiny_model, root / "rawsynth" / "dpo_train.jsonl", root / "dpobuild-q7",
                           filters=("no-answer",))}
    model = tiny_model("qwen2_vl")
    sft = make_recipe(root, model, root / "sftbuild-q7", name="sftrun-q7", steps=2,
                      **{"data.eval": str(root / "valbuild-q7")})
    train(sft, in_process=True)
    dpo = make_recipe(root, model, root / "dpobuild-q7", name="dporun-q7", objective="dpo", steps=2,
                      **{"dpo.start_adapter": str(sft.run_dir / "adapter")})
    train(dpo, in_process=True)
    return {"root": root, "sft": sft.run_dir, "dpo": dpo.run_dir, "built": built, "model": model}


def _dataset(stage: dict, role: str) -> dict:
    (found,) = [d for d in stage["datasets"] if d["role"] == role]
    return found


def test_a_dpo_run_from_an_sft_run_lists_both_stages_and_their_data(chain):
    from qvq_tune.run_folder import RunFolder
    doc = RunFolder(chain["dpo"]).training_data()
    sft, dpo = doc["stages"]
    assert [s["stage"] for s in doc["stages"]] == [1, 2]
    assert (sft["name"], sft["objective"], dpo["name"], dpo["objective"]) == ("sftrun-q7", "sft", "dporun-q7", "dpo")
    assert dpo["starts_from"] == "the adapter of stage 1 (sftrun-q7)"
    assert sft["steps"] == dpo["steps"] == 2                     # each stage completed by its train report
    built = chain["built"]
    train_, val, pairs = _dataset(sft, "train"), _dataset(sft, "validation"), _dataset(dpo, "train")
    for summary, report in ((train_, built["sft"]), (val, built["val"]), (pairs, built["dpo"])):
        assert (summary["records"], summary["kept"], summary["quarantined"]) == \
            (report["input_records"], report["kept"], report["quarantined"])
        assert summary["build_fingerprint"] == report["fingerprint"]
    assert train_["synthetic_share"] == pairs["synthetic_share"] == 1.0 and val["synthetic_share"] == 0.0
    assert val["licenses"] == ["apache-2.0"] and val["hub_id"] == DIVINE_HUB_ID
    assert {"filter": "--filter no-answer", "reason": "no_answer", "removed": 0} in pairs["filters"]
    assert pairs["kept"] == built["dpo"]["kept_preference"] > 0


def _export(chain, out: Path, **kw) -> Path:
    from qvq_tune.export.requests import AdapterRequest
    from qvq_tune.export.run import export_adapter
    export_adapter(AdapterRequest(out=out, run=chain["dpo"], **kw))
    return out


def test_an_export_carries_the_chain_in_json_and_in_a_card_that_round_trips(chain, tmp_path, capsys, monkeypatch):
    from huggingface_hub import ModelCard

    from qvq_tune.cli.main import main
    from qvq_tune.data.training_data import read
    from qvq_tune.run_folder import RunFolder
    out = _export(chain, tmp_path / "exported")
    doc = read(out)
    assert doc == RunFolder(chain["dpo"]).training_data()
    text = (out / "README.md").read_text(encoding="utf-8")
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == [DIVINE_HUB_ID]                     # Hub-style names only
    assert card.data.base_model and card.data.license and card.data.tags
    assert str(ModelCard(str(card))) == str(card) and ModelCard(text).data.to_dict() == card.data.to_dict()
    section = text[text.index("## Training data"):]
    for part in ("### 1. General information", "### 2. List of data sources", "### 3. Relevant data processing",
                 "sftrun-q7", "dporun-q7", "apache-2.0", DIVINE_HUB_ID, "--filter no-answer removed 0"):
        assert part in section, part
    assert str(chain["root"]) not in text + (out / "training_data.json").read_text()   # paths relative
    assert "valid.jsonl" in section                                    # ... and there
    # a record's content never: not one line of the divine-comedy texts
    assert "witnessed_scenario" not in text + json.dumps(doc)
    # the CLI: a table, and the document as JSON, for a run and for an export alike
    assert main(["data", "summary", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == doc
    monkeypatch.setenv("COLUMNS", "160")                               # rich's width when not a terminal
    assert main(["data", "summary", str(chain["dpo"])]) == 0
    table = capsys.readouterr().out
    assert "dporun-q7" in table and "apache-2.0" in table and DIVINE_HUB_ID in table


def test_redacted_paths_leave_no_path_in_the_summary(chain, tmp_path):
    out = _export(chain, tmp_path / "redacted", redact_paths=True)
    doc = json.loads((out / "training_data.json").read_text())
    published = (out / "README.md").read_text() + json.dumps(doc)
    names = ["sftbuild-q7", "valbuild-q7", "dpobuild-q7", "train.jsonl", "dpo_train.jsonl", "circle_9",
             "valid.jsonl", str(chain["root"]), str(REPO)]
    assert [n for n in names if n in published] == []
    assert doc["paths_redacted"] is True

    def keys(node):
        if isinstance(node, dict):
            return set(node) | set().union(*map(keys, node.values()))
        return set().union(*map(keys, node)) if isinstance(node, list) else set()
    assert not keys(doc) & {"path", "folder"}
    assert all(len(s["sha256"]) == 64 for st in doc["stages"] for d in st["datasets"] for s in d["sources"])


def test_a_run_on_a_base_with_a_record_lists_the_bases_stages_first(chain, tiny_model, tmp_path):
    """A base model folder that carries training_data.json (the tiny base, an exported merge) is
    the first stage(s) of every run on it; an adapter without a record is a stage saying so."""
    from qvq_tune.data.training_data import document
    from qvq_tune.run_folder import RunFolder, inherited_stages
    base = tmp_path / "base"
    shutil.copytree(chain["model"], base)
    pre = {"name": "pre", "objective": "sft", "datasets": [{"role": "train", "kept": 5}]}
    (base / "training_data.json").write_text(json.dumps(document([pre])))
    stages, starts = inherited_stages({"name": "x"}, base)
    assert [s["name"] for s in stages] == ["pre"] and starts == "the base model's weights"
    lone = tmp_path / "lone_adapter"
    shutil.copytree(RunFolder(chain["sft"]).adapter, lone)
    stages, starts = inherited_stages({"dpo": {"start_adapter": str(lone)}}, base)
    assert [s["name"] for s in stages] == ["pre", "an adapter without a record"]
    assert stages[1]["folder"] == "lone_adapter" and "not recorded" in stages[1]["provenance"]
    assert starts == "the adapter of stage 2 (its data not recorded)"


def test_the_tiny_bases_pre_training_is_recorded_as_its_first_stage(tiny_model, tmp_path):
    """A base folder as `tiny/pretrain.py` leaves it (report, pretrain/ recipe and train report)
    gains the record of its seeded caption data once, without changing its processor hash."""
    import yaml

    from qvq_tune.data.fingerprint import processor_hash
    from qvq_tune.run_folder import inherited_stages
    from qvq_tune.tiny.base_record import record_pretraining
    from qvq_tune.tiny.pretrain import REPORT_FILE, BaseRecipe
    base = tmp_path / "base"
    shutil.copytree(tiny_model("qwen2_vl"), base)
    recipe = BaseRecipe(steps=2, batch_size=3)
    (base / REPORT_FILE).write_text(json.dumps({"recipe": {"steps": 2, "batch_size": 3, "seed": 0, "spec": {}}}))
    (base / "pretrain").mkdir()
    run_recipe = recipe.training_recipe(base, tmp_path / "d", tmp_path / "r").to_dict()
    (base / "pretrain" / "recipe.yaml").write_text(yaml.safe_dump(run_recipe))
    (base / "pretrain" / "train_report.json").write_text(json.dumps({"steps": 2, "samples": 6}))
    files = sorted(p.name for p in base.iterdir())
    before = processor_hash(base)
    record = record_pretraining(base, log=lambda m: None)
    assert record == tmp_path / "base.training_data.json"  # beside the base: the folder stays as it was
    assert sorted(p.name for p in base.iterdir()) == files and processor_hash(base) == before
    (stage,) = json.loads(record.read_text())["stages"]
    assert (stage["name"], stage["objective"], stage["method"], stage["steps"]) == \
        ("tiny-qvq-base pre-training", "sft", "full", 2)
    (captions,) = stage["datasets"]
    assert (captions["records"], captions["kept"], captions["synthetic_share"], captions["licenses"]) == \
        (6, 6, 1.0, ["apache-2.0"])                         # steps x batch seeded captions, marked synthetic
    assert captions["images"] == 6 and captions["image_tokens"] > 0
    stages, _ = inherited_stages({"name": "next"}, base)
    assert [s["name"] for s in stages] == ["tiny-qvq-base pre-training"]


def test_sampled_pairs_are_summarised_as_synthetic_with_their_prompts_build(tiny_model, tmp_path):
    """`data pairs` output (a report with pairs, no build provenance): synthetic pairs whose
    prompts' licences come from the build they were sampled from."""
    from qvq_tune.data.training_data import dataset_summary
    prompts = _build(tiny_model, DIVINE, tmp_path / "prompts", data_name=DIVINE_HUB_ID)
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "report.json").write_text(json.dumps({
        "prompts": 3, "prompts_with_pair": 2, "prompts_without_pair": {"all_right": 1, "all_wrong": 0}, "pairs": 2,
        "fingerprint": "f" * 64, "settings": {"data": str(tmp_path / "prompts"), "samples": 4, "temperature": 0.7,
                                              "pair_cut": "step"}}))
    summary = dataset_summary(tmp_path / "pairs", "train")
    assert (summary["records"], summary["kept"], summary["quarantined"], summary["synthetic_share"]) == (3, 2, 1, 1.0)
    assert summary["quarantine_reasons"] == {"all_right": 1} and summary["licenses"] == ["apache-2.0"]
    assert summary["prompts"]["build_fingerprint"] == prompts["fingerprint"]


def test_a_base_that_kept_its_caption_summary_is_recorded_without_a_rebuild(tiny_model, tmp_path, monkeypatch):
    """A base built by today's `tiny/pretrain.py` keeps its caption build's summary in
    pretrain/: the record takes it as it is, and builds nothing."""
    import yaml

    from qvq_tune.tiny import base_record
    from qvq_tune.tiny.pretrain import CAPTIONS_SUMMARY, REPORT_FILE, BaseRecipe
    base = tmp_path / "base"
    shutil.copytree(tiny_model("qwen2_vl"), base)
    recipe = BaseRecipe(steps=2, batch_size=3)
    (base / REPORT_FILE).write_text(json.dumps({"recipe": {"steps": 2, "batch_size": 3, "seed": 0, "spec": {}}}))
    (base / "pretrain").mkdir()
    (base / "pretrain" / "recipe.yaml").write_text(
        yaml.safe_dump(recipe.training_recipe(base, tmp_path / "d", tmp_path / "r").to_dict()))
    (base / "pretrain" / "train_report.json").write_text(json.dumps({"steps": 2, "samples": 6}))
    kept = {"role": "train", "folder": "pretrain-captions", "records": 6, "kept": 6, "synthetic_share": 1.0}
    (base / "pretrain" / CAPTIONS_SUMMARY).write_text(json.dumps(kept))

    def no_build(*a, **k):
        raise AssertionError("the caption summary was kept: nothing to build")
    monkeypatch.setattr(base_record, "build", no_build)
    record = base_record.record_pretraining(base, log=lambda m: None)
    (stage,) = json.loads(record.read_text())["stages"]
    assert stage["datasets"] == [kept] and stage["steps"] == 2
