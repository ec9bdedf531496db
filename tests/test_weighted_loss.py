"""Per-message loss weights reach the SFT trainer's loss.

LLaMA-Factory v1 records with `loss_weight` 1, 2 and 0 are built with `data build`,
batched by the real collator and scored by the real trainer (`WeightedSFTTrainer`). The
reference loss is computed here by hand from the model's full logits: the sum of each
labelled token's cross-entropy times its weight, over the number of labelled tokens; both
ways of reading the LM head (`loss.lm_head`: TRL's fused head, or the labelled positions'
logits only) must give it.
"""

from __future__ import annotations

import json

import pytest
import torch

from qvq_tune.data.build import BuildConfig, build
from qvq_tune.data.collate import VisionCollator
from qvq_tune.data.dataset import load_samples
from qvq_tune.models.loading import load_processor


def message(role: str, text: str, weight: float | None = None) -> dict:
    out = {"role": role, "content": [{"type": "text", "value": text}]}
    return out if weight is None else {**out, "loss_weight": weight}


RECORDS = [
    {"messages": [message("user", "How many circles?", 0.0), message("assistant", "Three circles.", 1.0)]},
    {"messages": [message("user", "How many circles?", 0.0), message("assistant", "Three circles.", 2.0)]},
    {"messages": [message("user", "Colour?", 0.0), message("assistant", "Red, I think.", 0.0),
                  message("user", "How many circles?", 0.0), message("assistant", "Three circles.")]},
]


@pytest.fixture(scope="module", params=["fused", "labelled"])
def weighted(request, tiny_model, tmp_path_factory):
    """(trainer, collator, samples) for RECORDS built with the tiny qwen2_vl, the loss read from
    TRL's fused LM head or from the labelled positions' logits only (`loss.lm_head`)."""
    from trl import SFTConfig

    from qvq_tune.train.weighted_sft import WeightedSFTTrainer
    from transformers import AutoModelForImageTextToText

    root = tmp_path_factory.mktemp("weighted")
    (root / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    model_dir = tiny_model("qwen2_vl")
    report = build(BuildConfig(input=str(root / "in.jsonl"), model=str(model_dir), out=str(root / "out"),
                               reasoning="answer-only", workers=1))
    assert report["kept"] == 3, report["quarantine_reasons"]
    samples = load_samples(root / "out")
    processor = load_processor(model_dir)
    args = SFTConfig(output_dir=str(root / "run"), max_steps=1, per_device_train_batch_size=3, use_cpu=True,
                     report_to=[], bf16=False, max_length=None, remove_unused_columns=False,
                     dataset_kwargs={"skip_prepare_dataset": True}, activation_checkpointing=False,
                     logging_steps=1, save_strategy="no")
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    collator = VisionCollator(processor, loss_weights=True)
    trainer = WeightedSFTTrainer(model=model, args=args, train_dataset=samples, data_collator=collator,
                                 processing_class=processor, lm_head=request.param)
    trainer.model.eval()
    return trainer, collator, samples.to_list()


def reference_loss(model, batch) -> torch.Tensor:
    """sum(weight x cross-entropy) over labelled tokens / number of labelled tokens, from full logits."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_weights")}
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    weights = batch.get("loss_weights", (labels != -100).float().new_ones(batch["labels"].shape))[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return (ce * weights).sum() / (labels != -100).sum()


def loss(trainer, batch) -> torch.Tensor:
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, dict(batch))


def test_built_samples_carry_the_weights(weighted):
    _, _, (plain, double, zero_first) = weighted
    assert plain["loss_weights"] is None
    assert {w for w, lab in zip(double["loss_weights"], double["labels"]) if lab != -100} == {2.0}
    assert zero_first["loss_weights"] is None                 # the weight-0 reply is not labelled at all
    assert zero_first["num_label_tokens"] == plain["num_label_tokens"]


def test_weights_reach_the_trainers_loss(weighted):
    trainer, collate, (plain, double, zero_first) = weighted
    base = collate([plain])
    assert "loss_weights" not in base                          # unweighted batches are what they were
    assert "loss_weights" not in VisionCollator(trainer.processing_class)([double])   # nor for generation
    l_plain = loss(trainer, base)
    assert torch.allclose(l_plain, reference_loss(trainer.model, base), rtol=1e-4)
    ones = {**base, "loss_weights": (base["labels"] != -100).float()}
    assert torch.equal(loss(trainer, ones), l_plain)           # weight 1 is exactly the unweighted loss
    l_double = loss(trainer, collate([double]))
    assert torch.allclose(l_double, 2 * l_plain, rtol=1e-5)   # weight 2 doubles each token's contribution
    mixed = collate([plain, double])
    assert torch.allclose(loss(trainer, mixed), reference_loss(trainer.model, mixed), rtol=1e-4)
    assert torch.allclose(loss(trainer, mixed), 1.5 * l_plain, rtol=1e-4)
    # the reply of weight 0 adds nothing: the record scores as its weighted reply alone
    zero = collate([zero_first])
    assert torch.allclose(loss(trainer, zero), reference_loss(trainer.model, zero), rtol=1e-4)


def test_a_training_step_takes_weighted_batches(weighted):
    trainer, _, _ = weighted
    trainer.model.train()
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))


def test_reasoning_and_answer_span_weights_reach_the_loss(weighted, tiny_model, tmp_path):
    """The recipe's loss.reasoning_weight / answer_weight scale tokens by their label span."""
    from qvq_tune.data.render import SPAN_ANSWER, SPAN_REASONING
    trainer, _, _ = weighted
    record = {"question": "What do the parts cost?", "reasoning": "Three valves cost two each.", "answer": "6"}
    (tmp_path / "in.jsonl").write_text(json.dumps(record) + "\n")
    build(BuildConfig(input=str(tmp_path / "in.jsonl"), model=str(tiny_model("qwen2_vl")), out=str(tmp_path / "o"),
                      reasoning="qvq", workers=1))
    sample = load_samples(tmp_path / "o")[0]
    spans = set(sample["label_span"])
    assert {SPAN_REASONING, SPAN_ANSWER} <= spans
    processor = trainer.processing_class
    plain = VisionCollator(processor, loss_weights=True)([sample])
    assert "loss_weights" not in plain                         # (1, 1): TRL's own path, untouched
    batch = VisionCollator(processor, loss_weights=True, span_weights=(0.5, 3.0))([sample])
    expected = [0.0 if lab == -100 else (0.5 if span == SPAN_REASONING else 3.0)
                for lab, span in zip(sample["labels"], sample["label_span"])]
    assert batch["loss_weights"][0].tolist() == expected
    assert torch.allclose(loss(trainer, batch), reference_loss(trainer.model, batch), rtol=1e-4)
    only_answer = VisionCollator(processor, loss_weights=True, span_weights=(0.0, 1.0))([sample])
    assert loss(trainer, only_answer) < loss(trainer, plain)


@pytest.mark.parametrize("setting, batch, vocab, longest, chosen", [
    ("auto", 4, 500, 200, "labelled"),             # the tiny model: logits of a few MB
    ("auto", 1, 151_936, 2_300, "fused"),          # a Qwen2-VL-2B sample: 1.4 GB of fp32 logits
    ("auto", 16, 32_000, 1_000, "fused"),          # the batch counts, not one sample
    ("labelled", 1, 151_936, 2_300, "labelled"),   # an explicit setting is kept
    ("fused", 4, 500, 200, "fused"),
])
def test_auto_lm_head_on_cpu_avoids_large_logits(setting, batch, vocab, longest, chosen, monkeypatch):
    from qvq_tune.recipe import recipe_from_dict
    from qvq_tune.train.sft import LABELLED_LOGITS_CAP_GB, lm_head

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe = recipe_from_dict({"model": "tiny", "data": {"train": "x"}, "loss": {"lm_head": setting},
                               "optim": {"per_device_batch_size": batch}})
    assert lm_head(recipe, vocab, longest) == chosen
    if setting == "auto":      # the choice follows the cap, not the figures above
        assert (batch * longest * vocab * 4 / 1e9 <= LABELLED_LOGITS_CAP_GB) == (chosen == "labelled")
