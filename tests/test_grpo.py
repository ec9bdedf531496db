"""Objective grpo (issue 17) on the tiny models: the prompts TRL sees are the built ones,
a step on prompts of mixed lengths scores each completion as a forward of it alone would,
and a 2-process ZeRO-3 QLoRA run finishes with its correctness reward rising."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from .conftest import make_recipe


@pytest.fixture(scope="module")
def varied(tiny_model, tmp_path_factory):
    """The synthetic task with questions of different lengths (some with a second image), built for the tiny qwen2_vl."""
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.synth.generate import SynthConfig, generate
    root = tmp_path_factory.mktemp("grpo_varied")
    generate(SynthConfig(train=24, validation=0, test=0, dpo=False), root / "raw", progress=False)
    lines = (root / "raw" / "train.jsonl").read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        record = json.loads(line)
        record["question"] += f" Sheet {i}." + " Count carefully." * (i % 4)     # no two prompts alike
        if i % 3 == 2:
            record["images"] = record["images"] * 2
            record["question"] = "Both images show the same schematic. " + record["question"]
        records.append(json.dumps(record))
    (root / "raw" / "varied.jsonl").write_text("\n".join(records) + "\n")
    build(BuildConfig(input=str(root / "raw" / "varied.jsonl"), model=str(tiny_model("qwen2_vl")),
                      out=str(root / "built"), reasoning="qvq", workers=1))
    return root / "built"


def _grpo_recipe(tmp_path, model, data, **over):
    base = {"objective": "grpo", "method": "lora", "grpo.num_generations": 2, "grpo.max_completion_tokens": 6,
            "grpo.rewards": ["correct", "format", "loop"], "optim.lr": 1e-3}
    return make_recipe(tmp_path, model, data, steps=1, batch=6, **{**base, **over})


def _trainer(recipe):
    from qvq_tune.train.objectives import get, setup
    from qvq_tune.train.run import prepare
    recipe, run, _ = prepare(recipe, overwrite=True)
    shared = setup(recipe, run)
    trainer, _ = get("grpo").trainer(shared)
    return trainer, shared


def _mixed_length_rows(trainer, n: int = 3) -> list[dict]:
    """`n` prompts of different token lengths, each repeated once per generation (as TRL's sampler does)."""
    ds = trainer.train_dataset
    by_length, answers = {}, set()
    for i in range(len(ds)):
        if ds[i]["prompt_tokens"] not in by_length and ds[i]["answer"] not in answers:
            by_length[ds[i]["prompt_tokens"]] = i
            answers.add(ds[i]["answer"])
    assert len(by_length) >= n, "the test needs prompts of different lengths and answers"
    picks = [by_length[k] for k in sorted(by_length)[:: max(1, len(by_length) // n)][:n]]
    return [ds[i] for i in picks for _ in range(trainer.num_generations)]


def _alone_logps(model, processor, family, prompt_ids, completion_ids, images, temperature) -> torch.Tensor:
    """Per-token log-probs of the completion (at the sampling temperature, as GRPO scores
    them) from a forward of this one sequence, unpadded."""
    from qvq_tune.train.grpo import reset_rope_deltas
    ids = torch.cat([prompt_ids, completion_ids])[None]
    image_id = processor.tokenizer.convert_tokens_to_ids(family.image_token)
    kwargs = {}
    if images:
        pixels = processor.image_processor(images=images, return_tensors="pt")
        kwargs = {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"],
                  "mm_token_type_ids": (ids == image_id).long()}
    reset_rope_deltas(model)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).logits[0].float()
    p = len(prompt_ids)
    logps = torch.log_softmax(logits[p - 1:-1] / temperature, dim=-1)
    return logps.gather(1, completion_ids[:, None])[:, 0]


def _batch_vs_alone(trainer, shared) -> float:
    """Largest gap between TRL's per-completion log-probs for a mixed-length batch and each
    sequence's own forward."""
    rows = _mixed_length_rows(trainer)
    model = trainer.model
    model.eval()
    out = trainer._generate_and_score_completions(rows)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        batch, _, _ = trainer._get_per_token_logps_and_entropies(
            model, ids, mask, out["completion_ids"].size(1), pixel_values=out.get("pixel_values"),
            image_grid_thw=out.get("image_grid_thw"), num_images=out.get("num_images"),
            mm_token_type_ids=out.get("mm_token_type_ids"))
    assert len({int(m.sum()) for m in out["prompt_mask"]}) > 1, "prompts of one length test no padding"
    gap = 0.0
    for j, row in enumerate(rows):
        prompt = out["prompt_ids"][j][out["prompt_mask"][j].bool()]
        keep = out["completion_mask"][j].bool()
        completion = out["completion_ids"][j][keep]
        alone = _alone_logps(model, shared.processor, shared.family, prompt, completion, row.get("images") or [],
                             trainer.temperature)
        gap = max(gap, float((batch[j][keep] - alone).abs().max()))
    return gap


def test_prompts_are_the_built_ones_and_answers_their_gold(tmp_path, tiny_model, built_train):
    from qvq_tune.data.prompts import generation_prefix, prompt_from_sample
    trainer, shared = _trainer(_grpo_recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"]))
    ds = trainer.train_dataset
    prefix = generation_prefix(shared.processor, shared.family)
    for i in (0, len(ds) - 1):
        built = prompt_from_sample(shared.train[i], shared.processor.tokenizer, shared.family, prefix)
        row = ds[i]
        text = trainer.processing_class.apply_chat_template([row["prompt"]], tokenize=False,
                                                            add_generation_prompt=True)[0]
        ids = trainer.processing_class(text=[text], images=row["images"])["input_ids"][0]
        assert list(ids) == list(built.batch["input_ids"])
        assert row["answer"] == built.reference and row["answer"]
    assert trainer.processing_class.tokenizer.padding_side == "left"
    from qvq_tune.train.grpo import PASS_THROUGH_TEMPLATE
    assert shared.processor.chat_template != PASS_THROUGH_TEMPLATE   # the processor saved with the adapter is untouched


def test_a_step_on_mixed_prompt_lengths_scores_each_completion_as_alone(tmp_path, tiny_model, varied):
    trainer, shared = _trainer(_grpo_recipe(tmp_path, tiny_model("qwen2_vl"), varied))
    assert _batch_vs_alone(trainer, shared) < 1e-4


def test_the_comparison_catches_image_positions_padded_on_the_other_side(tmp_path, tiny_model, varied):
    """The same comparison with the processor padding on the right (text ids left-padded by
    TRL, `mm_token_type_ids` right-padded by the processor: TRL #5785) finds a gap, or the
    model refuses the misaligned image positions outright (which batch lengths decide)."""
    trainer, shared = _trainer(_grpo_recipe(tmp_path, tiny_model("qwen2_vl"), varied))
    trainer.processing_class.tokenizer.padding_side = "right"
    try:
        gap = _batch_vs_alone(trainer, shared)
    except RuntimeError as exc:
        assert "shape mismatch" in str(exc)
        return
    assert gap > 1e-2


@pytest.fixture(scope="module")
def constant_answer(tiny_model, tmp_path_factory):
    """The synthetic task with one answer ("7") for every question, written answer-only,
    and a QLoRA SFT adapter 3 steps into learning it: its samples are rarely right yet."""
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.synth.generate import SynthConfig, generate
    from qvq_tune.train.run import train
    root = tmp_path_factory.mktemp("grpo_const")
    generate(SynthConfig(train=32, validation=0, test=0, dpo=False), root / "raw", progress=False)
    records = [json.loads(line) for line in (root / "raw" / "train.jsonl").read_text().splitlines()]
    for record in records:
        record["answer"] = "7"
        record.pop("reasoning", None)
    (root / "raw" / "const.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    build(BuildConfig(input=str(root / "raw" / "const.jsonl"), model=str(tiny_model("qwen2_vl")),
                      out=str(root / "built"), reasoning="answer-only", workers=1))
    sft = make_recipe(root, tiny_model("qwen2_vl"), root / "built", name="sft", steps=3, batch=8,
                      **{"optim.lr": 0.003, "optim.warmup_steps": 0})
    train(sft, in_process=True)
    return root / "built", sft.run_dir


def test_grpo_qlora_zero3_across_two_processes_raises_the_correctness_reward(tmp_path, tiny_model, constant_answer):
    from qvq_tune.train.callbacks import read_metrics
    from qvq_tune.train.run import train
    data, sft_run = constant_answer
    recipe = _grpo_recipe(tmp_path, tiny_model("qwen2_vl"), data, name="grpo3", method="qlora",
                          **{"grpo.num_generations": 4, "grpo.max_completion_tokens": 4, "grpo.temperature": 1.0,
                             "grpo.rewards": ["correct"], "grpo.start_adapter": str(sft_run),
                             "optim.max_steps": 8, "optim.per_device_batch_size": 8, "optim.lr": 0.01,
                             "optim.warmup_steps": 0, "launch.accelerate_config": "zero3_shard_all",
                             "launch.num_processes": 2})
    report = train(recipe)
    assert report["world_size"] == 2 and report["steps"] == 8
    assert report["zero3_partition"]["partitioned_tensors"] > 0
    correct = [r["rewards/correct/mean"] for r in read_metrics(Path(recipe.run_dir) / "metrics.jsonl")
               if "rewards/correct/mean" in r]
    assert len(correct) == 8
    assert sum(correct[-3:]) / 3 > sum(correct[:3]) / 3 + 0.2, correct
    for key in ("frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio"):
        assert f"{key.replace('/', '_')}_last" in report, key
    assert (Path(recipe.run_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_group_watch_warns_on_no_spread_and_on_length_collapse(capsys):
    from types import SimpleNamespace

    from qvq_tune.train.grpo import GroupWatch
    watch, state = GroupWatch(zero_spread=0.8, collapse=0.3), SimpleNamespace(is_world_process_zero=True, global_step=1)
    for share, length in ((0.9, 100.0), (0.95, 90.0), (0.5, 80.0), (0.9, 70.0), (0.9, 60.0)):
        watch.on_log(None, state, None, {"frac_reward_zero_std": share, "completions/mean_length": length})
    assert "no reward spread" not in capsys.readouterr().err          # never 3 logs in a row
    for _ in range(3):
        watch.on_log(None, state, None, {"frac_reward_zero_std": 0.85, "completions/mean_length": 20.0})
    err = capsys.readouterr().err
    assert err.count("no reward spread") == 1 and err.count("fell from 100 to 20") == 1


def _gold_value(reply, *, answer, **_):
    """A reward that says which gold answer it was handed."""
    return float(answer)


def _rewarded_golds(trainer, rows) -> list[tuple[float, float]]:
    """(gold TRL's reward call was handed, gold of the prompt that completion answered)
    for every completion of one generation batch, the gold looked up from the built samples."""
    from qvq_tune.data.prompts import generation_prefix, prompt_from_sample
    from qvq_tune.train.grpo import collapse_placeholders
    shared = trainer._test_shared
    prefix = generation_prefix(shared.processor, shared.family)
    gold_of = {}
    for sample in shared.train:
        p = prompt_from_sample(sample, shared.processor.tokenizer, shared.family, prefix)
        text = shared.processor.tokenizer.decode(p.batch["input_ids"], skip_special_tokens=False)
        gold_of[collapse_placeholders(text, shared.family)] = float(p.reference)
    trainer._logs["prompt"].clear()
    trainer._logs["rewards"].clear()
    trainer.model.eval()
    trainer._generate_and_score_completions(rows)
    texts = ["".join(part["text"] for part in prompt[0]["content"] if part["type"] == "text")
             for prompt in trainer._logs["prompt"]]
    return list(zip(trainer._logs["rewards"]["_gold_value"], [gold_of[t] for t in texts]))


def test_each_completion_is_rewarded_against_its_own_prompts_gold(tmp_path, tiny_model, varied):
    """Several prompts x several generations through TRL's own generation and reward call:
    every completion's reward saw its own prompt's gold; answers shuffled across prompts, not."""
    trainer, shared = _trainer(_grpo_recipe(tmp_path, tiny_model("qwen2_vl"), varied,
                                            **{"grpo.rewards": ["correct", "tests.test_grpo:_gold_value"]}))
    trainer._test_shared = shared
    rows = _mixed_length_rows(trainer)
    pairs = _rewarded_golds(trainer, rows)
    assert len(pairs) == len(rows) and len({own for _, own in pairs}) > 1
    assert all(handed == own for handed, own in pairs), pairs
    golds = [row["answer"] for row in rows[::trainer.num_generations]]
    shuffled = golds[1:] + golds[:1]
    assert shuffled != golds
    moved = [{**row, "answer": shuffled[i // trainer.num_generations]} for i, row in enumerate(rows)]
    assert not all(handed == own for handed, own in _rewarded_golds(trainer, moved))


def _series(run_dir, key):
    from qvq_tune.train.callbacks import read_metrics
    return [(r["step"], r[key]) for r in read_metrics(Path(run_dir) / "metrics.jsonl") if key in r]


def test_a_grpo_run_resumed_from_a_checkpoint_samples_and_learns_as_the_whole_run(tmp_path, tiny_model, varied):
    """Killed after checkpoint 2 of 4 and resumed: the same rewards (the sampling RNG restored) and
    the same loss at every later step as the uninterrupted run."""
    from qvq_tune.train.run import train
    recipe = _grpo_recipe(tmp_path, tiny_model("qwen2_vl"), varied, name="resumed", **{
        "grpo.temperature": 1.0, "optim.max_steps": 4, "optim.save_steps": 1, "optim.warmup_steps": 0})
    run = recipe.run_dir
    keys = ("loss", "reward", "completions/mean_length")
    train(recipe, in_process=True)
    whole = {key: _series(run, key) for key in keys}
    assert [s for s, _ in whole["reward"]] == [1, 2, 3, 4]
    (run / "train_report.json").unlink()            # as if killed after checkpoint 2
    for later in (3, 4):
        (run / "checkpoints" / f"checkpoint-{later}" / "qvq_tune_complete.json").unlink()
    report = train(recipe, in_process=True, resume=True)
    assert report["resumed_from"].endswith("checkpoint-2") and report["steps"] == 4
    for key in keys:
        resumed = _series(run, key)
        assert [s for s, _ in resumed] == [1, 2, 3, 4], "each step logged once"
        for (step, a), (_, b) in zip(whole[key], resumed):
            assert b == pytest.approx(a, rel=1e-5, abs=1e-6), (key, step)


def test_grpo_scores_the_validation_prompts_every_eval_steps(tmp_path, tiny_model, varied, built_train):
    """`data.eval` with `optim.eval_steps`: TRL's evaluation samples the validation prompts and
    logs their reward at each evaluation step, into metrics.jsonl and the report."""
    from qvq_tune.train.run import train
    recipe = _grpo_recipe(tmp_path, tiny_model("qwen2_vl"), varied, name="validated", **{
        "data.eval": str(built_train["test"]), "optim.max_steps": 4, "optim.eval_steps": 2,
        "optim.save_steps": 2})
    report = train(recipe, in_process=True)
    evals = _series(recipe.run_dir, "eval_reward")
    assert [s for s, _ in evals] == [2, 4] and all(math.isfinite(v) for _, v in evals)
    assert report["steps"] == 4 and report["best_checkpoint"] is not None
    assert Path(report["best_checkpoint"]).name in {"checkpoint-2", "checkpoint-4"}
