"""DPO checked where it can silently go wrong (issue 16): the collator's rows against each
pair (chosen first, each reply with its own prompt's image); the start adapter really is
the policy at step 0 (log-probabilities computed with PEFT directly, not the base's);
`dpo.sft_weight` and `dpo.loss_type` change the loss by what their formulas say; the
chosen-log-prob warning; `--pair-cut divergence` on the token ids the model sees."""

from __future__ import annotations

import json
import math

import pytest
import torch

from .conftest import make_recipe

COLOURS = ("red", "green", "blue", "yellow")
BETA = 0.1


@pytest.fixture(scope="module")
def pairs(tiny_model, tmp_path_factory):
    """Four preference pairs, each with its own solid-colour image and its own replies."""
    from PIL import Image

    from qvq_tune.data.build import BuildConfig, build
    root = tmp_path_factory.mktemp("dpo_pairs")
    lines = []
    for k, colour in enumerate(COLOURS):
        Image.new("RGB", (112, 112), colour).save(root / f"{colour}.png")
        lines.append(json.dumps({
            "id": colour, "images": [f"{colour}.png"], "question": f"Question {k}: what colour is shown?",
            "chosen": {"reasoning": f"The picture is {colour}.", "answer": colour},
            "rejected": {"reasoning": f"The picture is {COLOURS[k - 1]}{' again' * k}.", "answer": COLOURS[k - 1]}}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    build(BuildConfig(input=str(root / "pairs.jsonl"), model=str(tiny_model("qwen2_vl")), out=str(root / "built"),
                      reasoning="qvq", workers=1))
    return root / "built"


def _samples(pairs):
    from qvq_tune.data.dataset import load_samples
    ds = load_samples(pairs, "preference")
    samples = [ds[i] for i in range(len(ds))]
    assert [s["id"] for s in samples] == list(COLOURS)
    return samples


def _pixels(processor, path):
    from PIL import Image
    out = processor.image_processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def test_the_collator_keeps_each_reply_with_its_side_and_its_prompts_image(tiny_model, pairs):
    """Rows 0..N-1 are prompt + chosen, rows N..2N-1 prompt + rejected (TRL reads the batch as
    [chosen, rejected]); each row's pixels are its own pair's image; the completion mask covers
    exactly the reply."""
    from qvq_tune.data.collate import VisionPreferenceCollator
    from qvq_tune.models.loading import load_processor
    processor = load_processor(tiny_model("qwen2_vl"))
    samples = _samples(pairs)
    batch = VisionPreferenceCollator(processor)(samples)
    n = len(samples)
    assert batch["input_ids"].shape[0] == 2 * n
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), batch["image_grid_thw"].prod(-1).cumsum(0)])
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for row in range(2 * n):
        side, s = ("chosen", "rejected")[row // n], samples[row % n]
        ids = s["prompt_input_ids"] + s[f"{side}_input_ids"]
        assert batch["input_ids"][row, :len(ids)].tolist() == ids, (row, side)
        assert batch["attention_mask"][row].sum().item() == len(ids)
        mask = batch["completion_mask"][row].tolist()
        assert mask == [0] * len(s["prompt_input_ids"]) + [1] * len(s[f"{side}_input_ids"]) + \
            [0] * (len(mask) - len(ids))
        pixels, grid = _pixels(processor, s["images"][0])
        assert batch["image_grid_thw"][row].tolist() == grid[0].tolist()
        assert torch.equal(batch["pixel_values"][offsets[row]:offsets[row + 1]], pixels), (row, s["id"])
        assert (batch["mm_token_type_ids"][row] == 1).sum().item() == \
            (batch["input_ids"][row] == image_token).sum().item() > 0
    # the images differ, so a row paired with another prompt's image could not pass the check above
    first, second = (_pixels(processor, samples[i]["images"][0])[0] for i in (0, 1))
    assert not torch.equal(first, second)
    # and the replies differ, so a swap of sides could not either
    assert all(s["chosen_input_ids"] != s["rejected_input_ids"] for s in samples)


@pytest.fixture(scope="module")
def start_adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter whose B matrices are not zero (PEFT's `init_lora_weights=False`), so the
    policy it gives differs clearly from the base."""
    from peft import LoraConfig, get_peft_model

    from qvq_tune.models.loading import load_model
    folder = tmp_path_factory.mktemp("start_adapter") / "adapter"
    torch.manual_seed(0)
    model = get_peft_model(load_model(tiny_model("qwen2_vl")),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(str(folder))
    return folder


def _reply_logps(model, processor, sample, side):
    """Per-token log-probabilities of one reply after its prompt and image, straight from the
    model (no collator, no TRL)."""
    ids = sample["prompt_input_ids"] + sample[f"{side}_input_ids"]
    pixels, grid = _pixels(processor, sample["images"][0])
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pixels,
                       image_grid_thw=grid, mm_token_type_ids=(input_ids == image_token).long()).logits[0]
    start = len(sample["prompt_input_ids"])
    logps = torch.log_softmax(logits[start - 1:-1].float(), -1)
    return logps.gather(-1, torch.tensor(ids[start:])[:, None])[:, 0]


@pytest.fixture(scope="module")
def direct(tiny_model, pairs, start_adapter):
    """Each pair's reply log-probabilities under the start adapter and under the bare base, by PEFT."""
    from peft import PeftModel

    from qvq_tune.models.loading import load_model, load_processor
    from qvq_tune.models.loading import reset_rope_cache
    processor = load_processor(tiny_model("qwen2_vl"))
    model = PeftModel.from_pretrained(load_model(tiny_model("qwen2_vl")), str(start_adapter)).eval()
    out = {"adapter": {"chosen": [], "rejected": []}, "base": {"chosen": [], "rejected": []}}
    for s in _samples(pairs):
        for side in ("chosen", "rejected"):
            out["adapter"][side].append(_reply_logps(model, processor, s, side))
            reset_rope_cache(model)
            with model.disable_adapter():
                out["base"][side].append(_reply_logps(model, processor, s, side))
            reset_rope_cache(model)
    return out


def _first_step(tmp_path, tiny_model, pairs, start_adapter, **over):
    """One DPO step from the start adapter on all four pairs in one batch; the first logged metrics."""
    from qvq_tune.train.callbacks import read_metrics
    from qvq_tune.train.run import train
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), pairs, objective="dpo", method="lora", steps=1, batch=4,
                         **{"dpo.start_adapter": str(start_adapter), "dpo.beta": BETA, "optim.lr": 1e-6,
                            "data.shuffle": False, **over})
    report = train(recipe, in_process=True)
    first = next(r for r in read_metrics(recipe.run_dir / "metrics.jsonl") if "logps/chosen" in r)
    return recipe, report, first


def test_dpo_starts_from_the_start_adapter_not_the_base(tmp_path, tiny_model, pairs, start_adapter, direct):
    """At step 0 the policy's chosen / rejected log-probabilities are the start adapter's (PEFT
    computed directly), and differ from the base's (ln 2 alone holds either way)."""
    _, report, first = _first_step(tmp_path, tiny_model, pairs, start_adapter)
    assert report["train_loss_first"] == pytest.approx(math.log(2), abs=1e-4)
    for side in ("chosen", "rejected"):
        adapter = sum(t.sum().item() for t in direct["adapter"][side]) / len(COLOURS)
        base = sum(t.sum().item() for t in direct["base"][side]) / len(COLOURS)
        tol = 1e-4 * max(1.0, abs(adapter))
        assert first[f"logps/{side}"] == pytest.approx(adapter, abs=tol), side
        assert abs(adapter - base) > 100 * tol, "the start adapter must move the log-probabilities"


def test_sft_weight_adds_its_share_of_the_chosen_replies_nll(tmp_path, tiny_model, pairs, start_adapter, direct):
    """TRL's "sft" term is the mean negative log-probability over all chosen reply tokens; at
    step 0 the DPO term is ln 2, so the loss is ln 2 + sft_weight x that NLL."""
    weight = 0.5
    recipe, report, _ = _first_step(tmp_path, tiny_model, pairs, start_adapter, **{"dpo.sft_weight": weight})
    tokens = torch.cat(direct["adapter"]["chosen"])
    nll = -tokens.mean().item()
    assert nll > 0.1
    assert report["train_loss_first"] == pytest.approx(math.log(2) + weight * nll, rel=1e-3)


@pytest.mark.parametrize("loss_type,at_step0", [("hinge", 1.0), ("ipo", 1 / (4 * BETA ** 2))], ids=["hinge", "ipo"])
def test_loss_type_reaches_trl_and_changes_the_loss(loss_type, at_step0, tmp_path, tiny_model, pairs,
                                                    start_adapter):
    """With the policy equal to its reference every log-ratio is 0: hinge gives relu(1) = 1,
    IPO (0 - 1 / (2 beta))^2, sigmoid ln 2."""
    from qvq_tune.run_folder import RunFolder
    from qvq_tune.train.dpo import dpo_config
    recipe, report, _ = _first_step(tmp_path, tiny_model, pairs, start_adapter, **{"dpo.loss_type": loss_type})
    assert dpo_config(recipe, RunFolder(recipe.run_dir)).loss_type == [loss_type]
    assert report["train_loss_first"] == pytest.approx(at_step0, rel=1e-4)
    assert abs(at_step0 - math.log(2)) > 0.1


def test_the_recipes_chosen_logp_drop_reaches_the_watch(tmp_path, tiny_model, pairs, start_adapter, monkeypatch):
    import qvq_tune.train.dpo as dpo
    made = []
    real = dpo.ChosenLogpWatch

    def watch(drop):
        made.append(real(drop))
        return made[-1]
    monkeypatch.setattr(dpo, "ChosenLogpWatch", watch)
    _first_step(tmp_path, tiny_model, pairs, start_adapter, **{"dpo.chosen_logp_drop_warning": 3.5})
    assert [w.drop for w in made] == [3.5] and made[0].start is not None


class _State:
    def __init__(self, step, zero=True):
        self.global_step, self.is_world_process_zero = step, zero


def test_the_chosen_logp_warning_fires_once_past_the_drop_and_only_then(capsys):
    from qvq_tune.train.callbacks import ChosenLogpWatch
    watch = ChosenLogpWatch(drop=5.0)
    for step, value in enumerate([-20.0, -22.0, -24.9, -26.0, -40.0], 1):
        watch.on_log(None, _State(step), None, logs={"logps/chosen": value, "loss": 0.6})
        err = capsys.readouterr().err
        if step == 4:
            assert "fell from -20.00 to -26.00 at step 4" in err
        else:
            assert "warning" not in err, step
    other = ChosenLogpWatch(drop=5.0)
    for step, value in enumerate([-20.0, -40.0], 1):
        other.on_log(None, _State(step, zero=False), None, logs={"logps/chosen": value})
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("rejected", [
    "The schematic shows 2 red circles. Each circle is a valve. A valve costs 2. 2 x 2 = 4.",
    "The schematic shows 3 red circles. Wait, let me look again. The schematic shows 3 red circles. "
    "Each circle is a valve. A valve costs 2. 3 x 2 = 6.",
    "示意图显示 3 red circles. 每个 circle is a valve. A valve costs 2. 3 x 2 = 6.",
])
def test_pair_cut_divergence_on_the_token_ids_the_model_sees(rejected, tiny_model, tmp_path):
    """Cut at the divergence point, the prompt's new tokens are the replies' shared token ids, and
    prompt + each part is exactly the start of what the whole reply tokenises to (nothing merged
    or split differently at the cut), ending past the first token where the replies differ."""
    from PIL import Image

    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.data.dataset import load_samples
    clean = "The schematic shows 3 red circles. Each circle is a valve. A valve costs 2. 3 x 2 = 6."
    Image.new("RGB", (112, 112), "red").save(tmp_path / "img.png")
    record = {"images": ["img.png"], "question": "What do the parts cost?",
              "chosen": {"reasoning": clean, "answer": "6"}, "rejected": {"reasoning": rejected, "answer": "6"}}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n")
    rows = {}
    for cut in ("none", "divergence"):
        build(BuildConfig(input=str(tmp_path / "pairs.jsonl"), model=str(tiny_model("qwen2_vl")),
                          out=str(tmp_path / cut), reasoning="qvq", pair_cut=cut, workers=1))
        rows[cut] = load_samples(tmp_path / cut, "preference")[0]
    whole, cut = rows["none"], rows["divergence"]
    prompt = whole["prompt_input_ids"]
    assert cut["prompt_input_ids"][:len(prompt)] == prompt
    shared = cut["prompt_input_ids"][len(prompt):]
    full = {side: whole[f"{side}_input_ids"] for side in ("chosen", "rejected")}
    common = 0
    while full["chosen"][common] == full["rejected"][common]:
        common += 1
    assert len(shared) <= common and full["chosen"][:len(shared)] == full["rejected"][:len(shared)] == shared
    for side in ("chosen", "rejected"):
        part = cut[f"{side}_input_ids"]
        assert part, side
        assert shared + part == full[side][:len(shared) + len(part)], side
        assert len(shared) + len(part) > common, f"the {side} part stops before the replies differ"
