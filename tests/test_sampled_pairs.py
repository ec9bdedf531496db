"""`qvq-tune data pairs` (issue 17): the model's own sampled replies, scored as the evaluator
scores them, paired right-and-clean (chosen) against wrong or defective (rejected), each
pair with its reason, every prompt accounted for, written as preference data DPO trains on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import make_recipe

LOOP = ("Wait, let me look again.", "Let me check once more.")


# ---- the pairing rule on scored replies -----------------------------------------------------
def _row(reply: str, reference: str = "15", sample: int = 0, hit_budget: bool = False) -> dict:
    from qvq_tune.eval.scoring import score_reply
    ref = "I see 3 triangles. Each triangle costs 5. 3 x 5 = 15.\n\n**Final Answer**\n\n\\[ \\boxed{15} \\]"
    return {"sample": sample, **score_reply(reply, reference, reference_reply=ref, hit_budget=hit_budget,
                                            num_tokens=30)}


RIGHT = "I see 3 triangles. Each triangle costs 5. 3 x 5 = 15.\n\n**Final Answer**\n\n\\[ \\boxed{15} \\]"
WRONG = "I see 2 triangles. Each triangle costs 5. 2 x 5 = 10.\n\n**Final Answer**\n\n\\[ \\boxed{10} \\]"
LOOPING = (f"I see 3 triangles. {LOOP[0]} I see 3 triangles. {LOOP[1]} I see 3 triangles. {LOOP[0]} "
           "I see 3 triangles. Each triangle costs 5. 3 x 5 = 15.\n\n**Final Answer**\n\n\\[ \\boxed{15} \\]")
MIXED = ("I see 3 triangles. 我看到三个三角形，每个三角形的价格是五。 Each triangle costs 5. 3 x 5 = 15."
         "\n\n**Final Answer**\n\n\\[ \\boxed{15} \\]")
CUT = "I see 3 triangles. Each triangle costs 5. 3 x 5 ="


@pytest.mark.parametrize("replies, chosen, rejected, tags", [
    ([(WRONG, False), (RIGHT, False)], 1, 0, ["wrong"]),
    ([(RIGHT, False), (LOOPING, False)], 0, 1, ["looping"]),
    ([(MIXED, False), (RIGHT, False)], 1, 0, ["language_mixed"]),
    ([(RIGHT, False), (CUT, True)], 0, 1, ["wrong", "truncated", "no_answer"]),
    ([(RIGHT, False), (RIGHT, True)], 0, 1, ["overlong"]),
    ([(LOOPING, False), (RIGHT, False), (WRONG, False)], 1, 2, ["wrong"]),   # a wrong one is rejected first
])
def test_a_right_clean_reply_is_chosen_over_a_wrong_or_defective_one(replies, chosen, rejected, tags):
    from qvq_tune.eval.pairing import pair_replies
    rows = [_row(text, sample=i, hit_budget=cut) for i, (text, cut) in enumerate(replies)]
    made = pair_replies(rows)
    assert made.no_pair is None and len(made.pairs) == 1
    good, bad, why = made.pairs[0]
    assert (good["sample"], bad["sample"], why) == (chosen, rejected, tags)


@pytest.mark.parametrize("replies, why", [
    ([RIGHT, RIGHT, RIGHT], "all_right"),
    ([WRONG, CUT, WRONG], "all_wrong"),
    ([LOOPING, WRONG, MIXED], "all_defective"),
])
def test_a_prompt_without_a_pair_says_why(replies, why):
    from qvq_tune.eval.pairing import pair_replies
    made = pair_replies([_row(t, sample=i) for i, t in enumerate(replies)])
    assert made.pairs == [] and made.no_pair == why


def test_more_pairs_per_prompt_take_each_rejected_reply_once():
    from qvq_tune.eval.pairing import pair_replies
    rows = [_row(t, sample=i) for i, t in enumerate([RIGHT, WRONG, LOOPING, RIGHT, WRONG.replace("2 x", "2  x")])]
    made = pair_replies(rows, pairs_per_prompt=5)
    assert [(g["sample"], b["sample"]) for g, b, _ in made.pairs] == [(0, 1), (3, 4), (0, 2)]


# ---- end to end on a tiny model whose replies are given -------------------------------------
def _scenarios(reference_reply: str, gold: str) -> dict[str, tuple[str, bool]]:
    wrong = str(int(gold) + 1)
    first, rest = reference_reply.split(". ", 1)
    return {
        "right": (reference_reply, False),
        "wrong": (reference_reply.replace(f"= {gold}.", f"= {wrong}.").replace(f"{{{gold}}}", f"{{{wrong}}}"), False),
        "looping": (f"{first}. {LOOP[0]} {first}. {LOOP[1]} {first}. {LOOP[0]} {first}. {rest}", False),
        "mixed": (f"{first}. 我看到了这些零件，每个零件的价格都写在图上。 {rest}", False),
        "cut": (reference_reply[:len(reference_reply) // 2].rstrip() + " and", True),
        "unmarked": (f"{first}. So the total is {wrong}.", False),     # no final-answer marker, wrong
    }


# per prompt: the replies sampled (3 each), then (chosen, rejected, reason) or the no-pair reason
PLAN = [
    (("right", "wrong", "right"), (0, 1, "right vs wrong")),
    (("looping", "right", "right"), (1, 0, "right vs looping")),
    (("right", "right", "right"), "all_right"),
    (("wrong", "unmarked", "cut"), "all_wrong"),
    (("looping", "wrong", "mixed"), "all_defective"),
    (("cut", "right", "mixed"), (1, 0, "right vs wrong+truncated+no_answer")),
    (("unmarked", "right", "right"), (1, 0, "right vs wrong")),
    (("mixed", "right", "right"), (1, 0, "right vs language_mixed")),
]


@pytest.fixture(scope="module")
def given_replies(tiny_model, built_train):
    """image path -> the replies "sampled" for that prompt (texts written from its reference)."""
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.eval.prompts import prompt_from_sample
    from qvq_tune.models.loading import load_processor
    from qvq_tune.models.registry import get_family
    tok = load_processor(tiny_model("qwen2_vl")).tokenizer
    ds = load_samples(built_train["test"])
    out = {}
    for i, (names, _) in enumerate(PLAN):
        p = prompt_from_sample(ds[i], tok, get_family("qwen2_vl"))
        texts = _scenarios(p.reference_reply, p.reference)
        out[ds[i]["images"][0]] = [texts[n] for n in names]
    return out


@pytest.fixture
def fake_sampler(monkeypatch, given_replies):
    """Replaces the generator `eval` and `data pairs` share with one that returns the given replies."""
    from qvq_tune.eval import evaluate
    from qvq_tune.eval.generate import Generation
    calls = []

    def generate(model, processor, prompts, *, samples=1, **kw):
        calls.append(len(prompts))
        return [Generation(text, 40, cut) for p in prompts for text, cut in given_replies[p["images"][0]][:samples]]
    monkeypatch.setattr(evaluate, "generate_replies", generate)
    return calls


def test_pairs_from_replies_scored_both_ways_train_with_dpo(tmp_path, tiny_model, built_train, fake_sampler,
                                                             given_replies):
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.eval.pairs import PairsOptions, make_pairs
    from qvq_tune.models.loading import load_processor
    from qvq_tune.train.run import train
    model = tiny_model("qwen2_vl")
    out = tmp_path / "pairs"
    report = make_pairs(out, PairsOptions(samples=3, limit=len(PLAN), device="cpu"), data=built_train["test"],
                        model=model)

    made = [(i, want) for i, (_, want) in enumerate(PLAN) if isinstance(want, tuple)]
    assert report["prompts"] == len(PLAN) and report["prompts_with_pair"] == len(made) == report["pairs"]
    assert report["prompts_without_pair"] == {"all_right": 1, "all_wrong": 1, "all_defective": 1}
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["record_index"], q["reason"]) for q in quarantined] == [
        (i, want) for i, (_, want) in enumerate(PLAN) if isinstance(want, str)]

    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert [(p["prompt_index"], p["chosen_sample"], p["rejected_sample"], p["reason"]) for p in pairs] == [
        (i, *want) for i, want in made]

    tok = load_processor(model).tokenizer
    ds = load_samples(out, "preference")
    replies = list(given_replies.values())
    for row, (i, (good, bad, _)) in zip(ds, made):
        chosen, rejected = tok.decode(row["chosen_input_ids"]), tok.decode(row["rejected_input_ids"])
        assert chosen == replies[i][good][0] + "<|im_end|>", "the right reply, as written, is chosen"
        cut = replies[i][bad][1]
        assert rejected == replies[i][bad][0] + ("" if cut else "<|im_end|>"), "the other one is rejected"
        assert row["images"] == built_train_images(built_train)[i]
    unmarked = ds[[i for i, _ in made].index(6)]
    assert "boxed" not in tok.decode(unmarked["rejected_input_ids"]), "a reply without a marker is kept as written"

    recipe = make_recipe(tmp_path, model, out, objective="dpo", steps=2, batch=2)
    trained = train(recipe, in_process=True)
    assert trained["objective"] == "dpo" and trained["steps"] == 2

    calls = len(fake_sampler)
    step = make_pairs(out, PairsOptions(samples=3, limit=len(PLAN), pair_cut="step", device="cpu"),
                      data=built_train["test"], model=model)
    assert len(fake_sampler) == calls and not step["sampled"], "another cut re-pairs the same samples"
    first = load_samples(out, "preference")[0]        # right vs wrong: they part at the step that counts
    head, last = replies[0][0][0].split("\n\n")[0].rsplit(". ", 1)
    assert tok.decode(first["prompt_input_ids"]).endswith(head + ".")
    assert tok.decode(first["chosen_input_ids"]) == " " + last
    assert step["pairs"] == report["pairs"]


def built_train_images(built_train) -> list[str]:
    from qvq_tune.data.dataset import load_samples
    return [s["images"] for s in load_samples(built_train["test"])]


# ---- real sampling: every prompt accounted for, and a resumed run samples what one run does --
def test_sampling_resumes_where_it_stopped_and_every_prompt_is_accounted_for(tmp_path, tiny_model, built_train,
                                                                              monkeypatch):
    from qvq_tune.cli.main import main
    from qvq_tune.eval import evaluate, pairs
    monkeypatch.setattr(pairs, "CHUNK_PROMPTS", 2)
    args = ["data", "pairs", "--model", str(tiny_model("qwen2_vl")), "--data", str(built_train["test"]),
            "--samples", "2", "--temperature", "1.0", "--max-new-tokens", "6", "--limit", "5", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0

    real, calls = evaluate.score_prompts, []

    def stops_after_two_chunks(*a, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(pairs, "score_prompts", stops_after_two_chunks)
    assert main([*args, "--out", str(tmp_path / "b")]) == 130
    assert not (tmp_path / "b" / "report.json").exists()
    calls.clear()
    monkeypatch.setattr(pairs, "score_prompts", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert len(calls) == 1, "only the chunk not yet sampled is sampled"

    a, b = ((tmp_path / d / "samples.jsonl").read_text() for d in "ab")
    assert a == b and len(a.splitlines()) == 10
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    without = sum(report["prompts_without_pair"].values())
    assert report["prompts"] == 5 == report["prompts_with_pair"] + without
    assert len((tmp_path / "b" / "quarantine.jsonl").read_text().splitlines()) == without
    assert not (tmp_path / "b" / ".sampling").exists()


def test_bad_options_fail_in_one_line(tmp_path, tiny_model, built_train, capsys):
    from qvq_tune.cli.main import main
    base = ["data", "pairs", "--model", str(tiny_model("qwen2_vl")), "--out", str(tmp_path / "o")]
    assert main([*base, "--data", str(built_train["test"]), "--samples", "1"]) == 1
    assert "--samples must be at least 2" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path)]) == 1
    assert "data build" in capsys.readouterr().err
