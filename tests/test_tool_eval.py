"""Evaluation that runs the tools: call parsing and checks, the tools file, the loop (with a
scripted generator standing in for the model), transcripts in `eval score`, the reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qvq_tune.data.tool_calls import check_call, find_calls, tool_call_diagnostics, valid_tool_call_reward
from qvq_tune.errors import UserError
from qvq_tune.eval.generate import Generation
from qvq_tune.eval.tools import load_tools
from qvq_tune.models.registry import TOOL_CALL_TOKENS, get_family

from .conftest import REPO

DATA = Path(__file__).parent / "data" / "tools"
OPEN, CLOSE = TOOL_CALL_TOKENS
PRICE = {"type": "function", "function": {"name": "price", "parameters": {
    "type": "object", "properties": {"part": {"type": "string"}}, "required": ["part"]}}}


def call(body: str) -> str:
    return f"{OPEN}\n{body}\n{CLOSE}"


def test_calls_are_found_and_checked_in_three_steps():
    text = ("I need prices. " + call('{"name": "price", "arguments": {"part": "R1"}}')
            + call('{"name": "price", "arguments": {"part": 7}}') + call('{"name": "cost", "arguments": {}}')
            + call("{name: price}") + call('{"name": "price", "arguments": {}}'))
    checked = [check_call(c, [PRICE]) for c in find_calls(text)]
    assert [(c["parses"], c["known"], c["valid"]) for c in checked] == [
        (True, True, True), (True, True, False), (True, False, False), (False, False, False), (True, True, False)]
    assert "type" in checked[1]["problem"] and "missing" in checked[4]["problem"]
    assert find_calls(OPEN + '{"name": "price", "arguments": {"part": "R1"}}')[0].name == "price"   # unclosed
    diag = tool_call_diagnostics([text, "Final answer: 3"], [PRICE])
    assert (diag["turns"], diag["calls"], diag["parsed"], diag["known"], diag["valid"]) == (2, 5, 4, 3, 1)


def test_valid_tool_call_reward():
    good, bad = call('{"name": "price", "arguments": {"part": "R1"}}'), call('{"name": "price"')
    rewards = valid_tool_call_reward([good, good + bad, "no call", [{"role": "assistant", "content": bad}]],
                                     tools=[PRICE])
    assert rewards == [1.0, 0.5, None, 0.0]
    assert valid_tool_call_reward([good, good], tools=[json.dumps([PRICE]), []]) == [1.0, 0.0]   # a column


def test_the_tools_file_defines_the_tools_and_failures_are_results():
    box = load_tools(DATA / "shop_tools.py", timeout=0.5)
    assert sorted(box.functions) == ["broken", "price", "slow"]           # not sqrt, not _helper
    schema = {s["function"]["name"]: s["function"]["parameters"] for s in box.schemas}
    assert schema["price"] == {"type": "object", "properties": {"part": {"type": "string"}}, "required": ["part"]}
    run = lambda body: box.run(find_calls(call(body))[0])  # noqa: E731
    assert run('{"name": "price", "arguments": {"part": "R1"}}') == "0.1"
    assert run('{"name": "price", "arguments": {"part": "Z9"}}').startswith("error: KeyError")
    assert run('{"name": "broken", "arguments": {}}') == "error: RuntimeError: the shop is closed"
    assert run('{"name": "slow", "arguments": {"seconds": 5}}') == "error: slow timed out after 0.5 s"
    assert run('{"name": "nope", "arguments": {}}').startswith("error: no tool named 'nope'")
    assert run('{"name": "price", "arguments": {"qty": 1}}').startswith("error: TypeError")
    assert run("not json").startswith("error: the tool call is not valid")


def test_a_bad_tools_file_is_a_user_error(tmp_path):
    (tmp_path / "t.py").write_text("raise ValueError('x')\n")
    with pytest.raises(UserError, match="cannot load the tools file"):
        load_tools(tmp_path / "t.py")
    (tmp_path / "e.py").write_text("X = 1\n")
    with pytest.raises(UserError, match="no public function"):
        load_tools(tmp_path / "e.py")


RECORD = {"images": ["images/red_square.png"], "question": "What does R1 cost?", "tools": [PRICE],
          "steps": [{"reasoning": "I look R1 up.", "tool_calls": [{"name": "price", "arguments": {"part": "R1"}}],
                     "results": ["0.1"]}],
          "reasoning": "The tool says 0.1.", "answer": "0.1"}


@pytest.fixture
def tool_data(tmp_path):
    import shutil
    shutil.copytree(REPO / "data_templates" / "images", tmp_path / "images")
    (tmp_path / "d.jsonl").write_text(json.dumps({**RECORD, "id": "a"}) + "\n" + json.dumps({**RECORD, "id": "b", "question": "What does R1 cost? Say it."}) + "\n")
    return tmp_path / "d.jsonl"


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_the_loop_runs_the_tools_and_scores_the_last_reply(family, tiny_model, tool_data, tmp_path, monkeypatch):
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.eval import generate as gen_module
    from qvq_tune.eval.evaluate import EvalModel, EvalOptions, evaluate
    from qvq_tune.eval.prompts import generation_prefix
    from qvq_tune.models.loading import load_processor
    model, fam = tiny_model(family), get_family(family)
    build(BuildConfig(input=str(tool_data), model=str(model), out=str(tmp_path / "b"), workers=1))
    processor = load_processor(model)
    tok = processor.tokenizer
    end = tok.convert_tokens_to_ids(fam.turn_end)
    seen = []
    close = fam.think_tokens[1] + "\n\n" if generation_prefix(processor, fam) else ""   # Qwen3 opens a trace

    def scripted(model_, processor_, prompts, **kw):      # a model that calls then answers
        out = []
        for p in prompts:
            text = tok.decode(p["input_ids"])
            seen.append(text)
            if "<tool_response>" not in text[text.rfind("What does R1 cost?"):]:
                assert OPEN not in text[text.rfind("What does R1 cost?"):]   # the prompt holds no call
                reply = "I look R1 up.\n" + close + call('{"name": "price", "arguments": {"part": "R1"}}') + \
                    call('{"name": "nope", "arguments": {}}')
            else:
                assert "\n0.1\n" in text and "error: no tool named 'nope'" in text
                reply = "The tool says 0.1.\n" + close + "Final answer: 0.1"
            ids = tok(reply, add_special_tokens=False)["input_ids"] + [end]
            out.append(Generation(reply, len(ids), False, tuple(ids)))
        return out
    monkeypatch.setattr(gen_module, "generate_replies", scripted)
    em = EvalModel(None, processor, fam, generation_prefix(processor, fam), {"model": str(model)})
    summary = evaluate(em, tmp_path / "b", EvalOptions(tools=str(DATA / "shop_tools.py"), max_new_tokens=64),
                       tmp_path / "ev")
    assert summary["accuracy"] == 1.0 and summary["mean_turns"] == 2
    assert summary["tool_call_parse_rate"] == 1.0 and summary["tool_call_known_rate"] == 0.5
    assert summary["tool_call_valid_rate"] == 0.5
    rows = [json.loads(line) for line in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert rows[0]["transcript"][0]["results"][0] == "0.1" and len(rows[0]["transcript"]) == 2
    assert rows[0]["diagnostics"]["loop"] is not None and len(seen) == 4


def test_the_loop_stops_at_the_turn_limit(tiny_model, tool_data, tmp_path, monkeypatch):
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.eval import generate as gen_module
    from qvq_tune.eval.evaluate import EvalModel, EvalOptions, evaluate
    from qvq_tune.models.loading import load_processor
    model, fam = tiny_model("qwen2_vl"), get_family("qwen2_vl")
    build(BuildConfig(input=str(tool_data), model=str(model), out=str(tmp_path / "b"), workers=1))
    processor = load_processor(model)
    end = processor.tokenizer.convert_tokens_to_ids(fam.turn_end)
    forever = call('{"name": "price", "arguments": {"part": "R1"}}')
    ids = tuple(processor.tokenizer(forever, add_special_tokens=False)["input_ids"] + [end])
    monkeypatch.setattr(gen_module, "generate_replies",
                        lambda m, p, prompts, **kw: [Generation(forever, len(ids), False, ids) for _ in prompts])
    em = EvalModel(None, processor, fam, "", {"model": str(model)})
    summary = evaluate(em, tmp_path / "b", EvalOptions(tools=str(DATA / "shop_tools.py"), max_tool_turns=3),
                       tmp_path / "ev")
    assert summary["mean_turns"] == 3 and summary["accuracy"] == 0.0 and summary["tool_call_valid_rate"] == 1.0


def test_eval_score_reads_multi_turn_transcripts(tmp_path):
    from qvq_tune.eval.predictions import score_predictions
    line = {"id": "t1", "reference": "0.35", "tools": [PRICE], "messages": [
        {"role": "user", "content": "R1 and C2 together?"},
        {"role": "assistant", "content": None, "reasoning_content": "Look both up.", "tool_calls": [
            {"type": "function", "function": {"name": "price", "arguments": "{\"part\": \"R1\"}"}},
            {"type": "function", "function": {"name": "price", "arguments": {"qty": 2}}}]},
        {"role": "tool", "content": "0.1"}, {"role": "tool", "content": "0.25"},
        {"role": "assistant", "content": "0.1 + 0.25 = 0.35. Final answer: 0.35"}]}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(line) + "\n" + json.dumps({"id": "plain", "reply": "Final answer: 1", "reference": "1"}) + "\n")
    summary = score_predictions(path, tmp_path / "out")
    assert summary["accuracy"] == 1.0 and summary["tool_calls"] == 2 and summary["tool_call_valid_rate"] == 0.5
    row = json.loads((tmp_path / "out" / "samples.jsonl").read_text().splitlines()[0])
    assert row["tools"]["turns"] == 2 and row["transcript"][0]["results"] == ["0.1", "0.25"]


def test_tool_options_are_checked():
    from qvq_tune.eval.evaluate import EvalOptions
    with pytest.raises(UserError, match="--samples"):
        EvalOptions(tools="t.py", samples=2, temperature=0.7)
    with pytest.raises(UserError, match="--max-tool-turns"):
        EvalOptions(tools="t.py", max_tool_turns=0)
