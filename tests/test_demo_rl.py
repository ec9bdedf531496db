"""The RL demo (`qvq-tune demo --rl`) at toy size on a tiny zoo model: every stage runs
for real, and both checkpoints the demo picks (the SFT start and the GRPO result) are
picked by their validation scores, which are the validation evaluations' own figures.
The lift itself is the full demo's to show (README)."""

from __future__ import annotations

import json

import pytest

REPORT_KEYS = ("rl_start_accuracy", "rl_start_blank_image_accuracy", "base_accuracy", "base_blank_image_accuracy",
               "grpo_accuracy", "grpo_blank_image_accuracy", "grpo_chosen_step", "grpo_validation", "sft_validation",
               "rl_start_step", "pairs_accuracy", "pairs_made", "sampled_loop_rate", "sampled_language_mix_rate",
               "stage_seconds", "wall_seconds", "plot")


@pytest.fixture(scope="module")
def toy_demo(tiny_model, tmp_path_factory):
    from qvq_tune.demo_rl import RLDemoConfig, run_rl_demo
    out = tmp_path_factory.mktemp("demo_rl") / "demo"
    cfg = RLDemoConfig(out=str(out), model=str(tiny_model("qwen2_vl")), train_size=24, validation_size=6,
                       test_size=5, sft_steps=4, sft_check_every=2, sft_batch_size=4, grpo_steps=4,
                       grpo_check_every=2, grpo_prompts_per_step=2, num_generations=2, max_new_tokens=8,
                       pairs_prompts=4, pairs_samples=2, dpo_steps=2, dpo_batch_size=2, defect_samples=2,
                       batch_size=8)
    return out, run_rl_demo(cfg)


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def test_the_rl_demo_runs_every_stage_and_reports_it(toy_demo):
    out, report = toy_demo
    for key in REPORT_KEYS:
        assert key in report, key
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "report.png").stat().st_size > 1000
    assert report["grpo_steps"] == 4 and set(report["grpo_validation"]) == {2, 4}
    assert set(report["sft_validation"]) == {2, 4}
    for stage in ("start", "grpo"):
        for rates in (report["sampled_loop_rate"], report["sampled_language_mix_rate"]):
            assert 0 <= rates[stage] <= 1
    # every test figure is the evaluation written for it, on the test split
    for name, key in (("start", "rl_start"), ("grpo", "grpo"), ("base", "base")):
        summary = _summary(out / "eval" / name)
        assert summary["settings"]["data"] == str(out / "data" / "test")
        assert summary["accuracy"] == report[f"{key}_accuracy"]
        assert summary["blank_accuracy"] == report[f"{key}_blank_image_accuracy"]
    # no pair, no DPO: said so, nothing made up
    if report["pairs_made"] == 0:
        assert report["pairs_accuracy"] is None and report["dpo_steps"] == 0
        assert sum(report["pairs_without_pair"].values()) == report["pairs_prompts"]
    else:
        assert report["pairs_accuracy"] == _summary(out / "eval" / "pairs_dpo")["accuracy"]


def test_checkpoints_are_chosen_on_the_validation_split(toy_demo):
    from qvq_tune.demo_rl import choose, choose_start
    out, report = toy_demo
    cfg = report["config"]
    for stage, scores, chosen, evaluated in (
            ("sft", report["sft_validation"], report["rl_start_step"], "start"),
            ("grpo", report["grpo_validation"], report["grpo_chosen_step"], "grpo")):
        for step, accuracy in scores.items():
            summary = _summary(out / "eval" / f"{stage}_validation" / f"step-{step}")
            assert summary["settings"]["data"] == str(out / "data" / "validation")
            assert summary["settings"]["adapter"].endswith(f"{stage}/checkpoints/checkpoint-{step}")
            assert summary["n"] == cfg["validation_size"] and summary["accuracy"] == accuracy
        # the test split was scored once, on the chosen checkpoint only
        assert _summary(out / "eval" / evaluated)["settings"]["adapter"].endswith(f"checkpoint-{chosen}")
    assert report["grpo_chosen_step"] == choose(report["grpo_validation"])
    assert report["rl_start_step"] == choose_start(report["sft_validation"], (cfg["start_min"], cfg["start_max"]),
                                                   cfg["start_target"])


def test_the_best_validation_score_wins_and_the_start_leaves_headroom():
    from qvq_tune.demo_rl import choose, choose_start
    assert choose({25: 0.5, 50: 0.62, 75: 0.55, 100: 0.62}) == 50           # best, earliest on a tie
    assert choose({25: 0.7, 50: 0.1}) == 25
    scores = {20: 0.05, 40: 0.28, 60: 0.42, 80: 0.66, 100: 0.9}
    assert choose_start(scores, (0.3, 0.7), 0.4) == 60                      # in the band, nearest the target
    assert choose_start(scores, (0.3, 0.7), 0.65) == 80
    assert choose_start({20: 0.1, 40: 0.95}, (0.3, 0.7), 0.4) == 20          # none inside: nearest the target


def test_demo_rl_flags_keep_their_own_defaults_and_the_default_demo_is_unchanged():
    import argparse

    from qvq_tune.cli import demo as cli_demo
    from qvq_tune.cli.args import dataclass_from_arguments
    from qvq_tune.demo import DemoConfig
    from qvq_tune.demo_rl import RLDemoConfig
    parser = argparse.ArgumentParser()
    cli_demo.add_parser(parser.add_subparsers())
    rl = cli_demo.rl_config(parser.parse_args(["demo", "--rl", "--seed", "3", "--grpo-steps", "7",
                                               "--rewards", "correct,format"]))
    assert rl == RLDemoConfig(seed=3, grpo_steps=7, rewards=("correct", "format"))
    assert rl.out == "runs/demo_rl" and rl.dpo_steps == RLDemoConfig().dpo_steps
    args = parser.parse_args(["demo", "--steps", "5"])
    assert not args.rl and dataclass_from_arguments(DemoConfig, args) == DemoConfig(steps=5)


def test_a_bad_setting_is_refused_before_anything_is_built(tmp_path):
    from qvq_tune.demo_rl import RLDemoConfig, run_rl_demo
    from qvq_tune.errors import UserError
    with pytest.raises(UserError, match="grpo.num_generations"):
        run_rl_demo(RLDemoConfig(out=str(tmp_path / "demo"), num_generations=1))
    assert not (tmp_path / "demo").exists()
