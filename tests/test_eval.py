"""`qvq-tune eval`: generation on built data with images and with video, run folders,
scoring replies generated elsewhere, comparing two evaluations. Every number in
summary.json is recomputed here from samples.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qvq_tune.errors import UserError
from qvq_tune.eval.evaluate import EvalOptions, run_eval
from qvq_tune.eval.scoring import summarize

from .conftest import REPO

ROW_KEYS = {"id", "sample", "condition", "reference", "reply", "trace", "extracted", "source", "match", "correct",
            "diagnostics"}
DIAG_KEYS = {"tokens", "chars", "hit_budget", "truncated", "no_answer", "loop", "language_mix", "consistent", "flags"}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "qvq_tune", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def read_out(out):
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return rows, summary


def check_recomputable(rows, summary):
    """summary.json is what summarize() makes of samples.jsonl, and its main numbers are
    what one would count by hand."""
    assert {k: v for k, v in summary.items() if k != "settings"} == summarize(rows)
    real = [r for r in rows if r["condition"] == "real"]
    blank = [r for r in rows if r["condition"] == "blank"]
    assert summary["n"] == len(real)
    assert summary["accuracy"] == round(sum(r["correct"] for r in real) / len(real), 4)
    assert summary["truncated"] == sum(r["diagnostics"]["truncated"] for r in real)
    assert summary["no_answer"] == sum(r["extracted"] is None for r in real)
    assert summary["loops"] == sum(r["diagnostics"]["loop"]["flagged"] for r in real)
    assert summary["language_mix"] == sum(r["diagnostics"]["language_mix"]["flagged"] for r in real)
    tokens = [r["diagnostics"]["tokens"] for r in real if r["diagnostics"]["tokens"] is not None]
    if tokens:
        assert summary["mean_tokens"] == round(sum(tokens) / len(tokens), 4)
    if blank:
        assert summary["blank_accuracy"] == round(sum(r["correct"] for r in blank) / len(blank), 4)
        assert summary["image_reliance"] == round(summary["accuracy"] - summary["blank_accuracy"], 4)
    for r in rows:
        assert ROW_KEYS <= set(r) and DIAG_KEYS <= set(r["diagnostics"])
        assert r["correct"] is (r["match"] is not None)


def test_eval_on_built_images_with_blank_media(tiny_model, built_train, tmp_path):
    opts = EvalOptions(max_new_tokens=12, batch_size=8, blank_images=True, device="cpu")
    summary = run_eval(tmp_path / "ev", opts, model=tiny_model("qwen2_vl"), data=built_train["test"])
    rows, written = read_out(tmp_path / "ev")
    assert written["settings"]["options"]["blank_images"] and written["settings"]["dtype"] == "float32"
    check_recomputable(rows, written)
    assert summary["n"] == 16 and summary["blank_n"] == 16
    assert all(r["diagnostics"]["tokens"] <= 12 for r in rows)
    # the budget is tiny: every reply that used all 12 tokens without a marked answer is truncated
    assert summary["truncated"] == sum(r["diagnostics"]["hit_budget"] and r["source"] == "none"
                                       for r in rows if r["condition"] == "real")
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "| accuracy |" in report and "| truncated_rate |" in report and "## Worst samples" in report


def test_eval_cli_on_raw_data_with_video_blanks_frames_too(tiny_model, tmp_path):
    """The README's sharegpt template (two image samples, one video) for a Qwen2.5-VL
    checkpoint: built on the fly, generated with video tensors, real and blank."""
    out = run_cli("eval", "--model", tiny_model("qwen2_5_vl"), "--data", REPO / "data_templates" / "sharegpt.json",
                  "--out", tmp_path / "ev", "--max-new-tokens", 8, "--blank-images", "--device", "cpu")
    assert out.returncode == 0, out.stderr[-3000:]
    rows, summary = read_out(tmp_path / "ev")
    check_recomputable(rows, summary)
    assert {(r["id"], r["condition"]) for r in rows} == {(i, c) for i in ("s1", "s2", "s3")
                                                         for c in ("real", "blank")}
    assert summary["settings"]["data_build"] == {"input_records": 3, "kept": 3, "quarantined": 0}
    from qvq_tune.data.dataset import load_samples
    assert load_samples(tmp_path / "ev" / "data").filter(lambda s: s["id"] == "s3")[0]["videos"]


def test_blank_media_whitens_images_and_video_frames_alike(tiny_model, tmp_path):
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.data.video import load_video
    from qvq_tune.eval.prompts import blank_media
    build(BuildConfig(input=str(REPO / "data_templates" / "sharegpt.json"), model=str(tiny_model("qwen2_5_vl")),
                      out=str(tmp_path / "b"), workers=1))
    for sample in load_samples(tmp_path / "b"):
        batch = {"images": sample["images"], "videos": sample["videos"]}
        blank = blank_media(batch)
        for path, img in zip(sample["images"], blank["images"]):
            from PIL import Image
            assert img.size == Image.open(path).size and img.getextrema() == ((255, 255),) * 3
        for path, video in zip(sample["videos"], blank["videos"]):
            real = load_video(path)
            assert video.frames.shape == real.frames.shape and int(video.frames.min()) == 255
            assert (video.fps, video.indices, video.total_frames) == (real.fps, real.indices, real.total_frames)


def test_eval_reads_the_run_folder(tiny_model, built_train, tmp_path):
    from qvq_tune.recipe import recipe_from_dict
    from qvq_tune.train.run import train
    recipe = recipe_from_dict({"name": "r", "model": str(tiny_model("qwen2_vl")), "method": "qlora",
                               "output_dir": str(tmp_path), "data": {"train": str(built_train["train"]),
                                                                     "eval": str(built_train["test"])},
                               "optim": {"max_steps": 2, "per_device_batch_size": 4, "logging_steps": 1}})
    train(recipe, in_process=True)
    out = run_cli("eval", "--run", recipe.run_dir, "--out", tmp_path / "ev", "--limit", 4, "--max-new-tokens", 6)
    assert out.returncode == 0, out.stderr[-3000:]
    rows, summary = read_out(tmp_path / "ev")
    check_recomputable(rows, summary)
    settings = summary["settings"]
    assert settings["adapter"] == str(recipe.run_dir / "adapter") and settings["load_in_4bit"]
    assert settings["model"] == str(tiny_model("qwen2_vl")) and settings["reasoning"] == "qvq"
    assert settings["data"] == str(built_train["test"]) and summary["n"] == 4


def test_sampled_replies_give_pass_at_n_and_majority(tiny_model, built_train, tmp_path):
    opts = EvalOptions(max_new_tokens=4, samples=3, temperature=1.0, limit=4, device="cpu")
    run_eval(tmp_path / "ev", opts, model=tiny_model("qwen2_vl"), data=built_train["test"])
    rows, summary = read_out(tmp_path / "ev")
    check_recomputable(rows, summary)
    assert len(rows) == 12 and [r["sample"] for r in rows[:3]] == [0, 1, 2] and summary["samples_per_prompt"] == 3
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r["correct"])
    assert summary["pass_at_n"] == round(sum(any(v) for v in by_id.values()) / 4, 4)
    assert summary["pass_at_n"] >= summary["majority_accuracy"]


PREDICTIONS = REPO / "tests" / "data" / "predictions.jsonl"


def test_score_predictions_without_a_model(tmp_path):
    out = run_cli("eval", "score", "--predictions", PREDICTIONS, "--out", tmp_path / "sc")
    assert out.returncode == 0, out.stderr
    rows, summary = read_out(tmp_path / "sc")
    check_recomputable(rows, summary)
    by_id = {r["id"]: r for r in rows if r["condition"] == "real"}
    assert {k: by_id[k]["extracted"] for k in ("q1", "q2", "q4")} == {
        "q1": "15", "q2": "C", "q4": "The number missing in the sequence is 14"}
    assert by_id["q1"]["correct"] and by_id["q2"]["correct"] and by_id["q4"]["correct"]
    assert by_id["q2"]["trace"].startswith("The third option")       # vLLM's reasoning field is the trace
    assert by_id["q3"]["diagnostics"]["flags"] == ["truncated", "no_answer"]
    assert by_id["q5"]["diagnostics"]["loop"]["flagged"] and by_id["q5"]["diagnostics"]["truncated"]
    assert by_id["q6"]["diagnostics"]["language_mix"]["flagged"]
    assert by_id["q7"]["diagnostics"]["consistent"] is False and by_id["q7"]["correct"]  # right, not from its trace
    assert summary["accuracy"] == round(5 / 7, 4) and summary["blank_accuracy"] == 0.0
    assert json.loads(out.stdout)["accuracy"] == summary["accuracy"]


def test_score_counts_tokens_with_a_tokenizer_when_lines_lack_them(tiny_model, tmp_path):
    from qvq_tune.eval.predictions import score_predictions
    from qvq_tune.models.loading import load_processor
    tok = load_processor(tiny_model("qwen2_vl")).tokenizer
    score_predictions(PREDICTIONS, tmp_path / "sc", tokenizer=tok, max_new_tokens=10_000)
    rows, _ = read_out(tmp_path / "sc")
    q4 = next(r for r in rows if r["id"] == "q4")
    assert q4["diagnostics"]["tokens"] == len(tok(q4["reply"], add_special_tokens=False)["input_ids"])
    assert q4["diagnostics"]["hit_budget"] is False


@pytest.mark.parametrize("line,needle", [
    ('{"id": 1, "reference": "3"}', ":2 [reply]: missing 'reply'"),
    ('{"id": 1, "reply": 3, "reference": "3"}', ":2 [reply]: 'reply' must be text"),
    ('{"id": 1, "reply": "3", "reference": "3", "condition": "dark"}', ":2 [condition]"),
    ('{"id": 1, "reply": "3"', ":2: not valid JSON"),
])
def test_bad_prediction_lines_are_one_line_errors(line, needle, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 0, "reply": "3", "reference": "3"}\n' + line + "\n")
    out = run_cli("eval", "score", "--predictions", path, "--out", tmp_path / "sc")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and f"{path}{needle}" in out.stderr


def test_compare_shows_every_metric_with_its_delta(tmp_path):
    from qvq_tune.eval.compare import compare
    from qvq_tune.eval.predictions import score_predictions
    before = score_predictions(PREDICTIONS, tmp_path / "a")
    fixed = [json.loads(line) for line in PREDICTIONS.read_text().splitlines()]
    for p in fixed:
        if p["id"] in ("q3", "q5"):
            p.update(reply=f"{p['reply']} done.\n\n**Final Answer**\n\n\\[ \\boxed{{{p['reference']}}} \\]",
                     finish_reason="stop")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in fixed))
    after = score_predictions(tmp_path / "b.jsonl", tmp_path / "b")
    rows = {r["metric"]: r for r in compare(before, after)}
    assert rows["accuracy"]["delta"] == round(after["accuracy"] - before["accuracy"], 4) > 0
    assert rows["accuracy"]["improved"] and rows["truncated_rate"]["improved"]
    assert rows["truncated_rate"]["b"] == 0 and rows["truncated_rate"]["delta"] < 0
    out = run_cli("eval", "compare", tmp_path / "a", tmp_path / "b" / "summary.json")
    assert out.returncode == 0 and "accuracy" in out.stdout and "pts" in out.stdout, out.stderr
    as_json = json.loads(run_cli("eval", "compare", tmp_path / "a", tmp_path / "b", "--json").stdout)
    assert {r["metric"] for r in as_json} == set(rows)


@pytest.mark.parametrize("kwargs,needle", [
    ({"samples": 2}, "--temperature"), ({"max_new_tokens": 0}, "--max-new-tokens"),
    ({"dtype": "float64"}, "--dtype"), ({"device": "gpu0"}, "--device"),
])
def test_eval_options_are_checked(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        EvalOptions(**kwargs)


def test_eval_without_data_or_out_is_a_one_line_error(tmp_path):
    for args in (["eval", "--model", "qwen2_vl", "--out", tmp_path], ["eval", "--model", "qwen2_vl", "--data", "x"]):
        out = run_cli(*args)
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize("family,opens_trace", [("qwen3_vl", True), ("qwen2_vl", False)])
def test_prompts_end_as_the_chat_templates_generation_prompt(family, opens_trace, tiny_model, tmp_path):
    """Qwen3-VL Thinking's template opens the trace in the generation prompt; the evaluator
    prompts the same way and reads the reply with that opening in front."""
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.eval.prompts import generation_prefix, prompt_from_sample
    from qvq_tune.models.loading import load_processor
    from qvq_tune.models.registry import get_family
    fam, model = get_family(family), tiny_model(family)
    build(BuildConfig(input=str(REPO / "data_templates" / "sharegpt.json"), model=str(model),
                      out=str(tmp_path / "b"), workers=1))
    processor = load_processor(model)
    prefix = generation_prefix(processor, fam)
    assert prefix == (f"{fam.think_tokens[0]}\n" if opens_trace else "")
    for sample in load_samples(tmp_path / "b"):
        prompt = prompt_from_sample(sample, processor.tokenizer, fam, prefix)
        text = processor.tokenizer.decode(prompt.batch["input_ids"])
        assert text.endswith(fam.assistant_header + prefix) and prompt.prefix == prefix
        assert prompt.reference in prompt.reference_reply
