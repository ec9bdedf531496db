"""GRPO rewards (issue 17): each reward on realistic replies in QVQ, Qwen2.5-VL and
Qwen3-VL Thinking styles, the hacks that must not pay, and rewards that reach their own
completion in a batch of several prompts with several generations each."""

from __future__ import annotations

import random

import pytest

from qvq_tune.train.rewards import (REWARDS, BatchReward, ReplyContext, correct, format, judge, language_mix, loop,
                                    overlong, reward_function)

QVQ = ReplyContext(style="qvq")
THINK = ReplyContext(style="think")
PLAIN = ReplyContext(style="answer-only")
REF_EN = "I see 3 triangles. Each triangle costs 5. 3 x 5 = 15."
REF_ZH = "我看到3个三角形。每个三角形5元。3 x 5 = 15。"

# (style, reply, gold): right, well-formed replies of each family's style
GOOD = {
    "qvq": (QVQ, "So I need to count the triangles in the image. I see 3 triangles. Each triangle costs 5. "
                 "3 x 5 = 15.\n\n**Final Answer**\n\n\\[ \\boxed{15} \\]", "15"),
    "qwen2.5-vl": (PLAIN, "The image shows three triangles, and each triangle costs 5. "
                          "Therefore, the total cost is 15.", "15"),
    "qwen3-vl-thinking": (THINK, "<think>\nThe diagram has 3 triangles. Each costs 5, so 3 x 5 = 15.\n</think>\n\n"
                                 "The total cost is 15.", "15"),
    "qwen3-vl-thinking-zh": (THINK, "<think>\n图中有3个三角形，每个5元，所以3×5=15。\n</think>\n\n15", "15"),
    "qvq-choice": (QVQ, "Let me compare the bars. The tallest bar is the second one, labelled B.\n\n"
                        "**Final Answer**\n\n\\[ \\boxed{B} \\]", "B"),
}

# (style, reply, gold, the hack judge must name): replies that try to score without earning it
HACKS = {
    "empty-answer-tags": (THINK, "<think>\nThere are 3 triangles.\n</think>\n\n<answer></answer>", "15",
                          "empty_answer"),
    "empty-boxed": (QVQ, "There are 3 triangles.\n\n**Final Answer**\n\n\\[ \\boxed{} \\]", "15", "empty_answer"),
    "a-or-b": (QVQ, "The tallest bar could be either.\n\n**Final Answer**: A or B", "B", "several_answers"),
    "two-options": (QVQ, "It is one of these.\n\n**Final Answer**: (B) or (C)", "B", "several_answers"),
    "two-boxed": (QVQ, "I count the triangles. \\boxed{15} or possibly \\boxed{17}", "15", "several_answers"),
    "two-numbers-zh": (THINK, "<think>\n可能是15，也可能是17。\n</think>\n\n15或17", "15", "several_answers"),
    "text-after-answer": (QVQ, "3 triangles at 5 each.\n\n**Final Answer**\n\n\\[ \\boxed{15} \\]\n\n"
                               "Wait, let me recount: maybe there are 4 triangles, so 20.", "15", "text_after_answer"),
    "no-reasoning-qvq": (QVQ, "**Final Answer**\n\n\\[ \\boxed{15} \\]", "15", "no_reasoning"),
    "no-reasoning-think": (THINK, "<think>\n\n</think>\n\n15", "15", "no_reasoning"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_a_right_well_formed_reply_earns_correct_and_format(name):
    ctx, reply, gold = GOOD[name]
    assert judge(reply, ctx).hacks == ()
    assert correct(reply, answer=gold, ctx=ctx) == 1.0
    assert format(reply, ctx=ctx) == 1.0
    assert correct(reply, answer="16" if gold == "15" else "C", ctx=ctx) == 0.0


@pytest.mark.parametrize("name", sorted(HACKS))
def test_hacks_do_not_pay(name):
    ctx, reply, gold, hack = HACKS[name]
    assert hack in judge(reply, ctx).hacks
    assert correct(reply, answer=gold, ctx=ctx) == 0.0
    assert format(reply, ctx=ctx) == 0.0


def test_format_asks_for_the_styles_markers():
    plain = "There are 3 triangles, each 5, so the total is 15."
    assert format(plain, ctx=PLAIN) == 1.0
    assert format(plain, ctx=QVQ) == 0.0                       # no final-answer block
    assert format("The diagram has 3 triangles.\n\n**Final Answer**\n\n\\[ \\boxed{15} \\]", ctx=THINK) == 0.0
    assert format("<think>\nThe diagram has 3 triangles and each costs 5, so", ctx=THINK) == 0.0   # never closed


def test_a_chinese_loop_costs_as_much_as_an_english_one():
    en = "<think>\n" + "I count the triangles again. " * 12 + "\n</think>\n\n15"
    zh = "<think>\n" + "我再数一遍三角形。" * 12 + "\n</think>\n\n15"
    clean_en, clean_zh = GOOD["qwen3-vl-thinking"][1], GOOD["qwen3-vl-thinking-zh"][1]
    assert loop(clean_en) == 0.0 and loop(clean_zh) == 0.0
    assert loop(en) < -0.5 and loop(zh) < -0.5
    assert abs(loop(en) - loop(zh)) < 0.15
    # a whitespace split would see one "word" repeated zero times in the Chinese loop
    assert len(("我再数一遍三角形。" * 12).split()) == 1


def test_language_mixing_is_measured_against_the_references_script():
    mixed = "<think>\nThere are 3 triangles, each costs 5. 所以总共是十五元，答案是十五。\n</think>\n\n15"
    english = GOOD["qwen3-vl-thinking"][1]
    chinese = GOOD["qwen3-vl-thinking-zh"][1]
    assert language_mix(english, reference_reply=REF_EN, ctx=THINK) == 0.0
    assert language_mix(chinese, reference_reply=REF_ZH, ctx=THINK) == 0.0
    assert language_mix(mixed, reference_reply=REF_EN, ctx=THINK) < -0.2
    assert language_mix(chinese, reference_reply=REF_EN, ctx=THINK) < language_mix(mixed, reference_reply=REF_EN,
                                                                                    ctx=THINK)


def test_overlong_ramps_to_minus_one_at_the_budget():
    ctx = ReplyContext(budget=100, overlong_cache=20)
    assert [overlong("x", num_tokens=n, ctx=ctx) for n in (10, 80, 90, 100, 120)] == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_rewards_by_name_and_a_users_own():
    assert set(REWARDS) == {"correct", "format", "loop", "language_mix", "overlong"}
    assert reward_function("tests.test_rewards:_my_reward") is _my_reward
    with pytest.raises(KeyError, match="known: correct"):
        reward_function("corect")


def _my_reward(reply, **_):
    return float(len(reply))


def _trl_batch(prompts: int, generations: int, seed: int):
    """A batch as TRL hands it to rewards: each prompt's row repeated once per generation,
    the groups in sampler order; every completion right for its own prompt (half written
    in the QVQ style, half wrong)."""
    rng = random.Random(seed)
    golds = [str(rng.randint(10, 99)) for _ in range(prompts)]
    order = rng.sample(range(prompts), prompts)
    rows, expected = [], []
    for p in order:
        for g in range(generations):
            right = g % 2 == 0
            value = golds[p] if right else str(int(golds[p]) + 1)
            rows.append((f"prompt {p}", f"I add the prices up to {value}.\n\n**Final Answer**\n\n"
                                        f"\\[ \\boxed{{{value}}} \\]", golds[p]))
            expected.append(1.0 if right else 0.0)
    return rows, expected


def test_rewards_reach_their_own_completion_in_a_multi_prompt_batch():
    rows, expected = _trl_batch(prompts=5, generations=4, seed=0)
    prompts, completions, answers = map(list, zip(*rows))
    reward = BatchReward("correct", QVQ)
    ids = [[0] * 10 for _ in completions]
    assert reward(prompts, completions, ids, answer=answers) == expected
    shuffled = answers[:]
    random.Random(1).shuffle(shuffled)
    assert reward(prompts, completions, ids, answer=shuffled) != expected
    with pytest.raises(ValueError, match="completions but"):
        reward(prompts, completions, ids, answer=answers[:-1])


def _opens_thinking(reply, **_):
    return float(reply.startswith("<think>"))


def test_conversational_completions_and_the_generation_prefix():
    """The reply scored is the prompt's generation prefix (Qwen3-VL opens the think block
    in the prompt) followed by the completion, whether TRL passes text or messages."""
    completion = [{"role": "assistant", "content": "3 triangles at 5 each make 15.\n</think>\n\n15"}]
    for name, want in (("format", 1.0), ("correct", 1.0), ("tests.test_rewards:_opens_thinking", 1.0)):
        assert BatchReward(name, THINK, prefix="<think>\n")(["p"], [completion], [[1, 2]], answer=["15"]) == [want]
    assert BatchReward("tests.test_rewards:_opens_thinking", THINK)(["p"], [completion], [[1]], answer=["15"]) == [0.0]


def test_a_completion_is_cut_only_when_it_fills_the_budget_without_ending():
    ctx = ReplyContext(style="answer-only", budget=4)
    reward = BatchReward("correct", ctx, end_ids=(99,))
    assert reward.hit_budget([1, 2, 3, 99]) is False           # ended on the budget's last token
    assert reward.hit_budget([1, 2, 3, 4]) is True
    assert reward.hit_budget([1, 2]) is False
    # a cut reply has an answer only where it is marked ("Answer: 15" is; a bare "15" is not)
    assert reward(["p"] * 2, ["15", "Answer: 15"], [[1, 2, 3, 4]] * 2, answer=["15"] * 2) == [0.0, 1.0]
    assert reward(["p"], ["15"], [[1, 2, 3, 99]], answer=["15"]) == [1.0]
