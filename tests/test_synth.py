"""Synthetic diagram tasks: determinism, held-out splits, checkable answers, DPO rejections."""

from __future__ import annotations

import hashlib
import json

import pytest

from qvq_tune.errors import UserError
from qvq_tune.synth.generate import SynthConfig, generate
from qvq_tune.synth.tasks import TASKS


def _tree_digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = SynthConfig(train=40, validation=5, test=10, seed=3)
    generate(cfg, tmp_path / "a", progress=False)
    generate(cfg, tmp_path / "b", progress=False)
    generate(SynthConfig(train=40, validation=5, test=10, seed=4), tmp_path / "c", progress=False)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_splits_are_disjoint_and_answers_follow_from_the_scene(task, tmp_path):
    m = generate(SynthConfig(task=task, train=120, validation=20, test=40), tmp_path, progress=False)
    assert m["counts"]["train"] == 120 and m["counts"]["test"] == 40
    from qvq_tune.synth.scenes import Scene
    for split in ("train", "validation", "test"):
        for r in _rows(tmp_path / f"{split}.jsonl"):
            assert (tmp_path / r["images"][0]).is_file()
            first = r["steps"][0]["reasoning"] if r.get("steps") else r["reasoning"]     # a tool task looks up first
            assert r["answer"] and first.startswith("The schematic shows")
            meta = r["meta"]
            scene = Scene(meta["shape"], meta["colour"], tuple(range(meta["count"])), ((0, 0, 0),) * meta["count"])
            assert TASKS[task].solve(scene).answer == r["answer"]


def test_no_scene_repeats_across_splits(tmp_path):
    from PIL import Image
    generate(SynthConfig(train=300, validation=0, test=100), tmp_path, progress=False)
    def pixels(split):
        return {Image.open(tmp_path / r["images"][0]).tobytes() for r in _rows(tmp_path / f"{split}.jsonl")}
    assert not pixels("train") & pixels("test")


def test_dpo_rejections_are_wrong_looping_or_language_mixed(tmp_path):
    generate(SynthConfig(train=30, validation=0, test=0), tmp_path, progress=False)
    pairs = _rows(tmp_path / "dpo_train.jsonl")
    kinds = {p["rejected_kind"] for p in pairs}
    assert kinds == {"wrong", "looping", "language_mixed"}
    for p in pairs:
        assert p["chosen"] != p["rejected"]
        if p["rejected_kind"] == "wrong":
            assert p["rejected"]["answer"] != p["chosen"]["answer"] or p["rejected"]["reasoning"] != p["chosen"]["reasoning"]
        elif p["rejected_kind"] == "looping":
            first = p["chosen"]["reasoning"].split(".")[0]
            assert p["rejected"]["reasoning"].count(first) >= 3
        else:
            assert any("\u4e00" <= ch <= "\u9fff" for ch in p["rejected"]["reasoning"])


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="unknown synthetic task"):
        SynthConfig(task="nope")


def test_parts_lookup_prices_come_only_from_its_tool(tmp_path):
    from qvq_tune.data.messages import Origin
    from qvq_tune.data.readers import ReaderOptions, parse
    from qvq_tune.eval.tools import load_tools
    from qvq_tune.synth.tasks import PART_OF_SHAPE, all_task_phrasebooks
    manifest = generate(SynthConfig(task="parts_lookup", train=12, validation=0, test=4), tmp_path / "s",
                        progress=False)
    assert manifest["tools"] == "tools.py" and "dpo_train" not in manifest["counts"]
    box = load_tools(tmp_path / "s" / "tools.py")
    assert sorted(box.functions) == ["price"]
    for line in (tmp_path / "s" / "train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        meta, step = rec["meta"], rec["steps"][0]
        part = f"{meta['colour']} {PART_OF_SHAPE[meta['shape']]}"
        assert step["tool_calls"] == [{"name": "price", "arguments": {"part": part}}]
        unit = box.functions["price"](part)
        assert step["results"] == [str(unit)] and rec["answer"] == str(meta["count"] * unit)
        assert str(unit) not in rec["question"] + step["reasoning"]           # not in the prompt nor read off
        conv = parse(rec, Origin("t", index=0), ReaderOptions())
        assert [t.role for t in conv.turns] == ["user", "assistant", "tool", "assistant"]
    assert not any("purple valve" in line for line in all_task_phrasebooks())   # tiny corpus unchanged
