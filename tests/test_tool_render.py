"""Tool-calling conversations rendered per family: Qwen3-VL equal to its own template with
`tools=`, Qwen2-VL / Qwen2.5-VL in their text models' format; labels on reasoning, calls and
answers, never on the tool list or the tool results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qvq_tune.data.messages import Origin
from qvq_tune.data.readers import ReaderOptions, parse
from qvq_tune.data.render import (IGNORE_INDEX, SPAN_ANSWER, SPAN_NONE, SPAN_REASONING, SPAN_TOOL_CALL,
                                  RenderOptions, SampleRenderer)
from qvq_tune.models.loading import load_processor
from qvq_tune.models.registry import chat_template_text, get_family

DATA = Path(__file__).parent / "data"
REASON_TOOLS = DATA / "llamafactory_tools" / "reason_tool_use_demo_50.jsonl"
GLAIVE = DATA / "llamafactory_tools" / "glaive_toolcall_en_demo.json"


def renderer(tiny_model, family, reasoning):
    return SampleRenderer(load_processor(tiny_model(family)), get_family(family), RenderOptions(reasoning=reasoning))


def reason_records(n=None):
    rows = [json.loads(line) for line in REASON_TOOLS.read_text().splitlines()]
    with_calls = [r for r in rows if any(p["type"] == "tool_call" for m in r["messages"] for p in m["content"])
                  and "</think>" not in json.dumps(r)]        # the two with a trace leaked into the answer
    return with_calls[:n] if n else with_calls


def openai_messages(record: dict) -> list[dict]:
    """LLaMA-Factory v1 messages written as OpenAI / HF chat messages, independently of our readers."""
    out = []
    for m in record["messages"]:
        parts = m["content"]
        text = "".join(p["value"] for p in parts if p["type"] == "text")
        if m["role"] != "assistant":
            out.append({"role": m["role"], "content": text})
            continue
        msg = {"role": "assistant", "content": text}
        reasoning = "".join(p["value"] for p in parts if p["type"] == "reasoning")
        if reasoning:
            msg["reasoning_content"] = reasoning.strip()
        calls = [json.loads(p["value"]) for p in parts if p["type"] == "tool_call"]
        if calls:
            msg["tool_calls"] = [{"type": "function", "function": c} for c in calls]
        out.append(msg)
    return out


def read(record):
    return parse(record, Origin("t.jsonl", index=0), ReaderOptions())


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
def test_qwen3_vl_equals_its_own_template_with_tools(tiny_model, family):
    r = renderer(tiny_model, family, "think")
    results = 0
    for record in reason_records():
        sample = r.render(read(record), [])
        theirs = r.processor.apply_chat_template(openai_messages(record), tools=json.loads(record["tools"]),
                                                 tokenize=False)
        assert "<tools>" in theirs and "<tool_call>" in theirs
        results += "<tool_response>" in theirs
        assert sample["input_ids"] == r.tokenizer(theirs, add_special_tokens=False)["input_ids"]
    assert results >= 20


def test_qwen3_vl_prompt_with_an_image_and_tools(tiny_model):
    r = renderer(tiny_model, "qwen3_vl", "think")
    record = {"tools": [{"name": "price", "parameters": {"type": "object", "properties": {"part": {"type": "string"}}}}],
              "messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                                        {"type": "text", "text": "Total?"}]},
                           {"role": "assistant", "content": "", "reasoning_content": "R1 is shown.",
                            "tool_calls": [{"type": "function", "function": {"name": "price", "arguments": {"part": "R1"}}}]},
                           {"role": "tool", "content": "0.10"}, {"role": "assistant", "content": "0.10"}]}
    conv = read(record)
    theirs = r.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Total?"}]}] + record["messages"][1:],
        tools=[{"type": "function", "function": record["tools"][0]}], tokenize=False)
    assert r.chat_text(conv.turns, tools=conv.tools) == theirs


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen2_families_use_the_qwen2_5_text_models_tool_format(tiny_model, family):
    import trl
    original = Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja"
    if not original.is_file():
        pytest.skip("this TRL release ships no qwen2_5.jinja")
    r = renderer(tiny_model, family, "answer-only")
    record = json.loads(GLAIVE.read_text())[0]
    conv = read({**record, "system": "You help cooks."})
    messages = [{"role": "system", "content": "You help cooks."}]
    for m in record["conversations"]:
        if m["from"] == "function_call":
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": [{"type": "function", "function": json.loads(m["value"])}]})
        else:
            role = {"human": "user", "gpt": "assistant", "observation": "tool"}[m["from"]]
            messages.append({"role": role, "content": m["value"]})
    tools = [{"type": "function", "function": t} for t in json.loads(record["tools"])]
    theirs = r.processor.apply_chat_template(messages, tools=tools, tokenize=False,
                                             chat_template=original.read_text())
    assert r.chat_text(conv.turns, tools=conv.tools) == theirs
    sample = r.render(conv, [])
    assert sample["input_ids"] == r.tokenizer(theirs, add_special_tokens=False)["input_ids"]


def test_the_tool_template_without_tools_is_the_vl_template(tiny_model):
    proc = load_processor(tiny_model("qwen2_5_vl"))
    fam = get_family("qwen2_5_vl")
    for messages in ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                      {"role": "assistant", "content": "A cat."}],
                     [{"role": "system", "content": "S."}, {"role": "user", "content": [{"type": "video"}]}]):
        ours = proc.apply_chat_template(messages, tokenize=False, chat_template=fam.tool_template_text())
        assert ours == proc.apply_chat_template(messages, tokenize=False, chat_template=chat_template_text(fam.chat_template))


def decoded(r, sample, span) -> str:
    ids = [t for t, s, lab in zip(sample["input_ids"], sample["label_span"], sample["labels"])
           if s == span and lab != IGNORE_INDEX]
    return r.tokenizer.decode(ids)


@pytest.mark.parametrize("family, fmt", [("qwen2_vl", "qvq"), ("qwen2_5_vl", "think"), ("qwen3_vl", "think")])
def test_labels_cover_reasoning_calls_and_answers_never_tools_or_results(tiny_model, family, fmt):
    r = renderer(tiny_model, family, fmt)
    record = reason_records()[0]
    conv = read(record)
    sample = r.render(conv, [])
    labelled = r.tokenizer.decode([t for t, lab in zip(sample["input_ids"], sample["labels"]) if lab != IGNORE_INDEX])
    unlabelled = r.tokenizer.decode([t for t, lab in zip(sample["input_ids"], sample["labels"]) if lab == IGNORE_INDEX])
    calls = decoded(r, sample, SPAN_TOOL_CALL)
    for turn in conv.turns:
        if turn.role == "tool":
            assert turn.text.strip() in unlabelled and turn.text.strip() not in labelled
        for call in turn.tool_calls:
            assert f'"name": "{call.name}"' in calls
            assert json.dumps(call.arguments, ensure_ascii=False) in calls
    for tool in conv.tools:
        name = tool["function"]["name"]
        assert json.dumps(tool["function"]["description"]) not in labelled
        assert name in unlabelled
    assert "<tools>" not in labelled and "tool_response" not in labelled
    assert calls.count("<tool_call>") == sum(len(t.tool_calls) for t in conv.turns)
    final = conv.turns[-1]
    assert final.text.strip() in decoded(r, sample, SPAN_ANSWER)
    replies = [t for t in conv.turns if t.role == "assistant"]
    last_calling = [t for t in replies if t.tool_calls][-1]
    assert last_calling.reasoning.strip()[:40] in decoded(r, sample, SPAN_REASONING)
    assert set(sample["label_span"]) == {SPAN_NONE, SPAN_REASONING, SPAN_ANSWER, SPAN_TOOL_CALL}


def test_records_without_tools_render_as_before(tiny_model):
    r = renderer(tiny_model, "qwen2_vl", "qvq")
    conv = read({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert r.chat_text(conv.turns, tools=conv.tools) == r.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "q"}]},
         {"role": "assistant", "content": r.format_reply(conv.turns[1])}], tokenize=False)
    assert "# Tools" not in r.chat_text(conv.turns)


def test_models_detect_says_how_tools_render(tiny_model):
    from qvq_tune.models.detect import detect
    assert detect(tiny_model("qwen2_vl")).tools.startswith("its chat template has no tool section")
    assert "qwen2_5_vl_tools.jinja" in detect(tiny_model("qwen2_5_vl")).tools
    assert detect(tiny_model("qwen3_vl")).tools.startswith("native")
