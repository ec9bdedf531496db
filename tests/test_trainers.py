"""Trainers (issue 8): DPO beside SFT under QLoRA + ZeRO-3, mixed batches, resume after a
kill, reproducibility, LoRA / freezing options, evaluation during training, settings that
travel with the adapter, and recipes that fail before anything launches."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import make_recipe




def _losses(run_dir, key="loss"):
    from qvq_tune.train.callbacks import read_metrics
    return [(r["step"], r[key]) for r in read_metrics(Path(run_dir) / "metrics.jsonl") if key in r]


def _synth_built(tiny_model, root: Path, records: int, split: str) -> Path:
    """`records` synthetic task records (`split`: "train", or "dpo_train" for preference pairs)
    built for the tiny qwen2_vl."""
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.synth.generate import SynthConfig, generate
    generate(SynthConfig(train=records, validation=0, test=0, dpo=split == "dpo_train"), root / "raw",
             progress=False)
    build(BuildConfig(input=str(root / "raw" / f"{split}.jsonl"), model=str(tiny_model("qwen2_vl")),
                      out=str(root / "built"), reasoning="qvq", workers=1))
    return root / "built"


@pytest.fixture(scope="module")
def preference(tiny_model, tmp_path_factory):
    """Preference pairs (clean chosen, wrong / looping / language-mixed rejected) built for the tiny qwen2_vl."""
    return _synth_built(tiny_model, tmp_path_factory.mktemp("preference"), 48, "dpo_train")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model, built_train):
    """A short QLoRA SFT run to start DPO from."""
    from qvq_tune.train.run import train
    root = tmp_path_factory.mktemp("sft_start")
    recipe = make_recipe(root, tiny_model("qwen2_vl"), built_train["train"], name="sft",
                     **{"optim.max_steps": 6, "optim.per_device_batch_size": 8})
    train(recipe, in_process=True)
    return recipe.run_dir


# ---- DPO -------------------------------------------------------------------------------------
def test_dpo_starts_at_ln2_from_the_sft_adapter_and_pushes_the_margin_up(tmp_path, tiny_model, preference, sft_run):
    """The reference is the starting policy (the SFT adapter, frozen), so the first loss is ln 2."""
    from qvq_tune.train.run import train
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), preference, objective="dpo",
                     **{"dpo.start_adapter": str(sft_run), "optim.max_steps": 8, "optim.lr": 0.002})
    report = train(recipe, in_process=True)
    assert report["objective"] == "dpo" and report["steps"] == 8
    assert report["train_loss_first"] == pytest.approx(math.log(2), abs=1e-3)
    margins = [m for _, m in _losses(recipe.run_dir, "rewards/margins")]
    assert sum(margins[-3:]) / 3 > margins[0] + 0.1
    assert (recipe.run_dir / "loss.png").stat().st_size > 1000
    assert report["trainable_dtypes"] == ["float32"], "adapters train in the recipe's dtype"


@pytest.mark.slow
def test_dpo_qlora_zero3_across_two_processes(tmp_path, tiny_model, preference, sft_run):
    from peft import PeftModel

    from qvq_tune.models.loading import load_model
    from qvq_tune.train.run import train
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), preference, objective="dpo", name="dpo3",
                     **{"dpo.start_adapter": str(sft_run / "adapter"), "optim.max_steps": 8, "optim.lr": 0.002,
                        "launch.accelerate_config": "zero3_shard_all", "launch.num_processes": 2})
    report = train(recipe)
    assert report["world_size"] == 2 and report["steps"] == 8
    part = report["zero3_partition"]
    assert part["partitioned_tensors"] > 0 and part["local_numel"] * 2 == pytest.approx(part["full_numel"], rel=0.02)
    assert report["rewards_margins_last"] > report["rewards_margins_first"]
    for key in ("rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert len(_losses(recipe.run_dir, key)) == 8, key
    # The DPO adapter loads onto the base and differs from the SFT adapter it started from.
    base = tiny_model("qwen2_vl")
    dpo = load_file(recipe.run_dir / "adapter" / "adapter_model.safetensors")
    sft = load_file(sft_run / "adapter" / "adapter_model.safetensors")
    assert dpo.keys() == sft.keys() and any(not torch.equal(dpo[k], sft[k]) for k in dpo)
    PeftModel.from_pretrained(load_model(base, load_in_4bit=True), recipe.run_dir / "adapter")


# ---- ZeRO-3 with a text-only rank ----------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_media(tiny_model, tmp_path_factory):
    """Samples alternating image / text-only: unshuffled with batch 1 on 2 ranks, rank 0 always
    gets an image and rank 1 never does."""
    from PIL import Image

    from qvq_tune.data.build import BuildConfig, build
    root = tmp_path_factory.mktemp("mixed")
    Image.new("RGB", (112, 112), (220, 40, 40)).save(root / "red.png")
    rows = [{"id": f"i{i}", "images": ["red.png"], "question": f"Colour? {i}", "answer": "red"} if i % 2 == 0
            else {"id": f"t{i}", "question": f"What is {i} plus one?", "answer": str(i + 1)} for i in range(16)]
    (root / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build(BuildConfig(input=str(root / "mixed.jsonl"), model=str(tiny_model("qwen2_vl")), out=str(root / "built"),
                      reasoning="answer-only", workers=1))
    return root / "built"


@pytest.mark.slow
def test_zero3_with_a_text_only_rank_finishes(tmp_path, tiny_model, mixed_media):
    """Without the dummy vision pass the text-only rank desynchronises ZeRO-3's gathers (a hang on
    GPUs, an abort with gloo); the subprocess timeout turns a hang into a failure."""
    script = (f"from qvq_tune.recipe import recipe_from_dict; from qvq_tune.train.run import train; "
              f"r = recipe_from_dict({{'name': 'mixed', 'model': {str(tiny_model('qwen2_vl'))!r}, "
              f"'output_dir': {str(tmp_path)!r}, 'data': {{'train': {str(mixed_media)!r}, 'shuffle': False}}, "
              f"'lora': {{'vision': True}}, 'optim': {{'max_steps': 4, 'per_device_batch_size': 1, 'logging_steps': 1}}, "
              f"'launch': {{'accelerate_config': 'zero3_shard_all', 'num_processes': 2}}}}); print(train(r)['steps'])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "4"


def test_vision_pass_without_media_leaves_the_loss_unchanged(tiny_model, built_train):
    from qvq_tune.data.collate import VisionCollator
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.models.loading import load_model, load_processor
    from qvq_tune.models.registry import get_family
    from qvq_tune.train.mixed_batches import keep_vision_tower_in_step
    path = tiny_model("qwen2_vl")
    model = load_model(path).eval()
    sample = dict(load_samples(built_train["train"])[0])
    n_image = sum(1 for t in sample["input_ids"] if t == model.config.image_token_id)
    text_only = {"input_ids": [t for t in sample["input_ids"] if t != model.config.image_token_id],
                 "labels": [l for t, l in zip(sample["input_ids"], sample["labels"])
                            if t != model.config.image_token_id]}
    assert n_image > 0
    batch = VisionCollator(load_processor(path))([text_only])
    calls = []
    model.model.visual.register_forward_hook(lambda *a: calls.append(1))
    plain = model(**batch).loss
    handles = keep_vision_tower_in_step(model, get_family("qwen2_vl"))
    hooked = model(**batch).loss
    assert calls == [1], "the vision tower ran once, on the dummy image"
    assert torch.equal(plain, hooked)
    for h in handles:
        h.remove()


# ---- resume ------------------------------------------------------------------------------
def _kill_everything_of(run_dir: Path, launcher: subprocess.Popen) -> None:
    """SIGKILL the whole job: the launcher's process group and the workers torch starts in
    sessions of their own (as a scheduler's cgroup kill would)."""
    import psutil
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    workers = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    for proc in workers:
        proc.kill()
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_with_the_same_losses(tmp_path, tiny_model, built_train):
    """Uninterrupted vs SIGKILLed after checkpoint 3 and resumed: the same loss and learning rate
    at every step (LoRA dropout on, so the RNG state must be restored too)."""
    from qvq_tune.train.run import train

    def recipe(name):
        return make_recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"], name=name,
                       **{"lora.dropout": 0.1, "optim.max_steps": 8, "optim.save_steps": 3,
                          "launch.accelerate_config": "zero3_shard_all", "launch.num_processes": 2})
    train(recipe("whole"))
    cut = recipe("cut")
    code = ("import sys, json; from qvq_tune.recipe import recipe_from_dict; from qvq_tune.train.run "
            f"import train; train(recipe_from_dict(json.loads({json.dumps(json.dumps(cut.to_dict()))})))")
    launcher = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = cut.run_dir / "checkpoints" / "checkpoint-3" / "qvq_tune_complete.json"
    deadline = time.time() + 300
    while not marker.is_file():
        assert launcher.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    _kill_everything_of(cut.run_dir, launcher)
    assert not (cut.run_dir / "train_report.json").exists()

    from qvq_tune.errors import UserError
    with pytest.raises(UserError, match="--resume"):
        train(cut)                                  # an unfinished run is not silently restarted
    report = train(cut, resume=True)
    assert report["steps"] == 8 and report["resumed_from"].endswith("checkpoint-3")
    whole, resumed = _losses(recipe("whole").run_dir), _losses(cut.run_dir)
    assert [s for s, _ in resumed] == list(range(1, 9)), "each step logged once"
    assert [s for s, _ in whole] == list(range(1, 9))
    for (step, a), (_, b) in zip(whole, resumed):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6), step
    assert _losses(cut.run_dir, "learning_rate") == _losses(recipe("whole").run_dir, "learning_rate")
    with pytest.raises(UserError, match="finished run"):
        train(cut)                                  # a finished run is never overwritten silently


@pytest.fixture(scope="module")
def ten_samples(tiny_model, tmp_path_factory):
    """10 samples: with batch 4 an epoch is 3 steps (4, 4, 2)."""
    return _synth_built(tiny_model, tmp_path_factory.mktemp("ten"), 10, "train")


@pytest.mark.slow
def test_a_run_resumed_in_epoch_1_logs_the_same_losses_in_later_epochs(tmp_path, tiny_model, ten_samples):
    """Resumed from a checkpoint at the last step of the first epoch, then from one inside it,
    the later epochs draw the same shuffled batches with the same dropout: loss, grad norm,
    learning rate and epoch equal the uninterrupted run's at every step."""
    from qvq_tune.train.run import train
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), ten_samples, method="lora",
                         **{"lora.dropout": 0.1, "optim.max_steps": 5, "optim.save_steps": 1})
    run = recipe.run_dir
    keys = ("loss", "grad_norm", "learning_rate", "epoch")
    train(recipe, in_process=True)
    whole = {key: _losses(run, key) for key in keys}
    assert whole["epoch"][-1][1] == pytest.approx(5 / 3, abs=0.01), "5 steps of a 3-step epoch"
    for checkpoint in (3, 2):                       # the end of epoch 1, then its middle
        (run / "train_report.json").unlink()        # as if killed after `checkpoint`
        for later in range(checkpoint + 1, 6):
            (run / "checkpoints" / f"checkpoint-{later}" / "qvq_tune_complete.json").unlink()
        report = train(recipe, in_process=True, resume=True)
        assert report["resumed_from"].endswith(f"checkpoint-{checkpoint}") and report["steps"] == 5
        resumed = {key: _losses(run, key) for key in keys}
        assert [s for s, _ in resumed["loss"]] == list(range(1, 6)), "each step logged once"
        for key in ("loss", "grad_norm"):
            for (step, a), (_, b) in zip(whole[key], resumed[key]):
                assert b == pytest.approx(a, rel=1e-5, abs=1e-6), (checkpoint, key, step)
        assert resumed["learning_rate"] == whole["learning_rate"] and resumed["epoch"] == whole["epoch"]


def test_checkpoints_without_a_completion_marker_are_not_resumed(tmp_path, tiny_model, built_train):
    from qvq_tune.errors import UserError
    from qvq_tune.train.run import train
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"], method="lora",
                     **{"optim.max_steps": 4, "optim.save_steps": 2})
    train(recipe, in_process=True)
    run = recipe.run_dir
    (run / "train_report.json").unlink()              # as if killed after the last save
    (run / "checkpoints" / "checkpoint-4" / "qvq_tune_complete.json").unlink()  # ... during it
    report = train(recipe, in_process=True, resume=True)
    assert report["resumed_from"].endswith("checkpoint-2") and report["steps"] == 4
    for ckpt in ("checkpoint-2", "checkpoint-4"):
        (run / "checkpoints" / ckpt / "qvq_tune_complete.json").unlink(missing_ok=True)
    (run / "train_report.json").unlink()
    with pytest.raises(UserError, match="no complete checkpoint"):
        train(recipe, in_process=True, resume=True)


# ---- reproducibility and options ----------------------------------------------------------
def test_same_seed_same_loss_at_every_step(tmp_path, tiny_model, built_train):
    from qvq_tune.train.run import train
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"], name=name,
                         **{"lora.dropout": 0.1, "optim.seed": seed})
        train(recipe, in_process=True)
        runs[name] = _losses(recipe.run_dir)
    assert runs["a"] == runs["b"], "same seed: identical losses"
    assert runs["a"] != runs["c"], "another seed: another run"


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_lora_options_reach_peft(tmp_path, tiny_model, built_train):
    from qvq_tune.train.run import train
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"], method="lora",
                     **{"lora.targets": ["q_proj", "v_proj"], "lora.vision": True, "lora.merger": False,
                        "lora.rslora": True, "lora.dora": True, "freeze.merger": False,
                        "lora.modules_to_save": ["lm_head"]})
    train(recipe, in_process=True)
    config = json.loads((recipe.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] and config["use_rslora"]
    assert set(config["modules_to_save"]) == {"lm_head", "model.visual.merger"}
    keys = load_file(recipe.run_dir / "adapter" / "adapter_model.safetensors").keys()
    lm = {k for k in keys if "language_model" in k and "lora_A" in k}
    assert lm and all(".q_proj." in k or ".v_proj." in k for k in lm)
    assert any("visual.blocks" in k and "lora_A" in k for k in keys), "LoRA on the vision tower"
    assert not any("visual.merger" in k and "lora_" in k for k in keys), "no LoRA on the merger ..."
    assert any(k.endswith("visual.merger.mlp.0.weight") for k in keys), "... which trains fully, saved whole"
    assert any("lm_head" in k for k in keys)
    assert any("lora_magnitude_vector" in k for k in keys), "DoRA magnitudes saved"


def test_per_part_learning_rates(tmp_path, tiny_model, built_train):
    from qvq_tune.models.registry import get_family
    from qvq_tune.train.model_setup import build_model, optimizer_groups
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"], method="lora",
                     **{"lora.vision": True, "lora.merger": True, "optim.lr": 1e-3, "optim.vision_lr": 1e-5,
                        "optim.merger_lr": 1e-4, "optim.weight_decay": 0.1})
    fam = get_family("qwen2_vl")
    model = build_model(recipe, fam, recipe.model)
    groups = optimizer_groups(model, recipe, fam)
    by_lr = {}
    for g in groups:
        by_lr.setdefault(g["lr"], set()).update(id(p) for p in g["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert {fam.part_of(names[i]) for i in by_lr[1e-5]} == {"vision"}
    assert {fam.part_of(names[i]) for i in by_lr[1e-4]} == {"merger"}
    assert {fam.part_of(names[i]) for i in by_lr[1e-3]} == {"language_model"}
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == trainable
    assert optimizer_groups(model, make_recipe(tmp_path, recipe.model, built_train["train"]), fam) is None


def test_double_quant_is_wired(tiny_model):
    from qvq_tune.models.loading import load_model
    for double in (True, False):
        model = load_model(tiny_model("qwen2_vl"), load_in_4bit=True, double_quant=double)
        q = model.get_submodule("model.language_model.layers.0.self_attn.q_proj").weight.quant_state
        assert q.nested is double


def test_validation_loss_and_best_checkpoint(tmp_path, tiny_model, built_train):
    from qvq_tune.train.run import train
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"], method="lora",
                     **{"data.eval": str(built_train["test"]), "optim.max_steps": 6, "optim.eval_steps": 2,
                        "optim.save_total_limit": 1})
    report = train(recipe, in_process=True)
    evals = _losses(recipe.run_dir, "eval_loss")
    assert [s for s, _ in evals] == [2, 4, 6]
    best_step, best = min(evals, key=lambda x: x[1])
    assert report["eval_loss_best"] == best
    assert report["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    best_adapter = load_file(Path(report["best_checkpoint"]) / "adapter_model.safetensors")
    final = load_file(recipe.run_dir / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(best_adapter[k], final[k]) for k in final), "the run ends on its best checkpoint"


# ---- settings that travel with the adapter -------------------------------------------------
def test_a_build_with_other_pixel_limits_trains_evaluates_and_exports(tmp_path, tiny_model):
    """Built with 56x56 images (4 tokens, not the processor's 112x112 / 16): training,
    evaluation and export all read the build's settings; none meets a grid mismatch."""
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.eval.evaluate import EvalOptions, evaluate, load_for_eval
    from qvq_tune.export.run import MergeRequest, export_merge
    from qvq_tune.synth.generate import SynthConfig, generate
    from qvq_tune.train.run import train
    model = tiny_model("qwen2_vl")
    generate(SynthConfig(train=16, validation=0, test=8, dpo=False), tmp_path / "raw", progress=False)
    for split in ("train", "test"):
        report = build(BuildConfig(input=str(tmp_path / "raw" / f"{split}.jsonl"), model=str(model),
                                   out=str(tmp_path / split), min_pixels=56 * 56, max_pixels=56 * 56, workers=1))
        assert report["stats"]["sft"]["num_vision_tokens"]["max"] == 4
    recipe = make_recipe(tmp_path, model, tmp_path / "train", method="lora")
    train(recipe, in_process=True)
    assert json.loads((recipe.run_dir / "dataset.json").read_text())["processor"] == \
        {"min_pixels": 3136, "max_pixels": 3136}
    opts = EvalOptions(max_new_tokens=8, limit=4, device="cpu")
    assert evaluate(load_for_eval(model, recipe.run_dir / "adapter", opts), tmp_path / "test", opts,
                    tmp_path / "eval")["n"] == 4
    report = export_merge(MergeRequest(out=tmp_path / "export", run=recipe.run_dir, data=tmp_path / "test"))
    assert report["passed"] and report["proof"]["passed"]


# ---- recipes that fail before anything launches ------------------------------------------
@pytest.fixture(scope="module")
def other_family_build(tiny_model, tmp_path_factory):
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.synth.generate import SynthConfig, generate
    root = tmp_path_factory.mktemp("other_family")
    generate(SynthConfig(train=4, validation=0, test=0, dpo=False), root / "raw", progress=False)
    build(BuildConfig(input=str(root / "raw" / "train.jsonl"), model=str(tiny_model("qwen2_5_vl")),
                      out=str(root / "built"), workers=1))
    return root / "built"


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qvq_tune", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("case,needle", [
    ("misspelt", "[learnin_rate]: unknown key learnin_rate (did you mean optim.lr?)"),
    ("wrong_type", "[optim.max_steps]: optim.max_steps must be int, got str 'many'"),
    ("missing_dataset", "[data.train]: "),
    ("other_family", "built for the qwen2_5_vl family, but the model is qwen2_vl"),
    ("dpo_on_sft", "objective dpo needs preference pairs"),
])
def test_bad_recipes_fail_in_one_line_before_any_worker_starts(case, needle, tmp_path, tiny_model, built_train,
                                                                other_family_build):
    body = {"name": "bad", "model": str(tiny_model("qwen2_vl")), "output_dir": str(tmp_path / "runs"),
            "data": {"train": str(built_train["train"])}}
    extra = ""
    if case == "misspelt":
        extra = "learnin_rate: 0.1\n"
    elif case == "wrong_type":
        body["optim"] = {"max_steps": "many"}
    elif case == "missing_dataset":
        body["data"]["train"] = str(tmp_path / "nowhere")
    elif case == "other_family":
        body["data"]["train"] = str(other_family_build)
    else:
        body["objective"] = "dpo"
    path = tmp_path / "recipe.yaml"
    import yaml
    path.write_text(yaml.safe_dump(body) + extra)
    for args in (["--check"], []):
        out = _cli("train", "--recipe", str(path), *args)
        lines = [l for l in out.stderr.splitlines() if l.strip()]
        assert out.returncode == 1 and len(lines) == 1, out.stderr
        assert needle in lines[0] and str(path) in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "runs" / "bad" / "train.log").exists(), "no worker was launched"
