"""Tool-calling records: LLaMA-Factory's two published tool demos, OpenAI / TRL / ms-swift rows
and native steps read into one canonical form; each defect quarantined with its own reason."""

import json
from pathlib import Path

import pytest

from qvq_tune.data.messages import Conversation, Origin, ToolCall
from qvq_tune.data.quarantine import RecordError
from qvq_tune.data.readers.base import ReaderOptions, parse

DATA = Path(__file__).parent / "data"
LF = DATA / "llamafactory_tools"


def rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


def read(record, i=0) -> Conversation:
    return parse(record, Origin("t.jsonl", index=i), ReaderOptions())


def read_all(records):
    examples, quarantined = [], {}
    for i, r in enumerate(records):
        try:
            examples.append((r, read(r, i)))
        except RecordError as exc:
            quarantined[i] = (exc.code, exc.field)
    return examples, quarantined


# The reasoning demo's records 5 and 6 carry a stray `</think>` in their answer text (a trace
# leaked past its reasoning part); every other record of both files is valid.
@pytest.mark.parametrize("name, kept, with_calls, bad", [
    ("reason_tool_use_demo_50.jsonl", 48, 30, {5: ("think_marker_in_answer", "messages[2].content"),
                                               6: ("think_marker_in_answer", "messages[4].content")}),
    ("glaive_toolcall_en_demo.json", 300, 153, {})])
def test_llamafactory_tool_demos_every_valid_record_kept(name, kept, with_calls, bad):
    examples, quarantined = read_all(rows(LF / name))
    assert len(examples) == kept and quarantined == bad
    assert sum(any(t.tool_calls for t in ex.turns) for _, ex in examples) == with_calls
    for record, ex in examples:
        listed = json.loads(record["tools"]) if record["tools"] else []
        assert len(ex.tools) == len(listed)
        assert all(t["type"] == "function" and "name" in t["function"] for t in ex.tools)   # wrapped
        names = {t["function"]["name"] for t in ex.tools}
        assert all(c.name in names for t in ex.turns for c in t.tool_calls)


def test_v1_reasoning_stays_in_the_calling_turn():
    record = rows(LF / "reason_tool_use_demo_50.jsonl")[1]
    ex = read(record)
    source = record["messages"][2]["content"]
    turn = ex.turns[2]
    assert turn.role == "assistant" and turn.reasoning == source[0]["value"]
    call = json.loads(source[1]["value"])
    assert turn.tool_calls == [ToolCall(call["name"], call["arguments"])]
    assert turn.text == "" and ex.turns[3].role == "tool"
    assert ex.turns[3].text == record["messages"][3]["content"][0]["value"]


def test_sharegpt_function_call_and_observation_turns():
    record = rows(LF / "glaive_toolcall_en_demo.json")[0]
    ex = read(record)
    assert [t.role for t in ex.turns] == ["user", "assistant", "user", "assistant", "tool", "assistant",
                                          "user", "assistant"]
    assert ex.turns[3].tool_calls == [ToolCall("search_recipes",
                                               {"ingredients": ["chicken", "bell peppers", "rice"]})]
    assert ex.turns[4].text == record["conversations"][4]["value"]


def test_openai_trl_swift_and_native_rows():
    examples = [read(r, i) for i, r in enumerate(rows(DATA / "tools" / "openai_tools.jsonl"))]
    parallel, trl, swift, plain, native = examples
    assert parallel.turns[2].tool_calls == [ToolCall("price", {"part": "R1"}), ToolCall("price", {"part": "C2"})]
    assert parallel.turns[2].reasoning == "I need both prices." and parallel.turns[3].role == "tool"
    assert trl.turns[1].text == "Let me check." and trl.turns[1].tool_calls[0].arguments == {"city": "Paris"}
    assert trl.tools[0]["type"] == "function"                        # a bare tool is wrapped
    assert [t.role for t in swift.turns] == ["user", "assistant", "tool", "assistant"]
    assert swift.tools == parallel.tools
    assert plain.tools == [] and all(not t.tool_calls for t in plain.turns)
    assert [t.role for t in native.turns] == ["user", "assistant", "tool", "assistant"]
    assert native.turns[1].reasoning == "The schematic shows R1." and native.turns[2].text == "0.10"


def test_an_assistant_turn_and_its_call_turn_become_one():
    ex = read({"tools": [{"name": "f", "parameters": {"type": "object", "properties": {}}}], "messages": [
        {"role": "user", "content": "go"}, {"role": "assistant", "content": "Calling f."},
        {"role": "tool_call", "content": '{"name": "f", "arguments": {}}'},
        {"role": "tool_call", "content": '{"name": "f", "arguments": {}}'},
        {"role": "tool_response", "content": "1"}, {"role": "tool_response", "content": "2"},
        {"role": "assistant", "content": "done"}]})
    assert [t.role for t in ex.turns] == ["user", "assistant", "tool", "tool", "assistant"]
    assert ex.turns[1].text == "Calling f." and len(ex.turns[1].tool_calls) == 2


def test_each_defect_is_its_own_reason_with_the_field_named():
    expected = {"tool_call_not_json": "messages[1].tool_calls[0].function.arguments",
                "unknown_tool": "messages[1].tool_calls[0]",
                "missing_tool_argument": "messages[1].tool_calls[0]",
                "orphan_tool_result": "messages[1]"}
    seen = []
    for i, record in enumerate(rows(DATA / "tools" / "tools_bad.jsonl")):
        with pytest.raises(RecordError) as info:
            read(record, i)
        assert info.value.code == record["id"], info.value.message
        if record["id"] in expected:
            assert info.value.field == expected[record["id"]]
        seen.append((info.value.code, info.value.field))
    assert ("bad_tool_schema", "tools[0].function.parameters.properties.part.type") in seen
    assert ("bad_tool_schema", "tools") in seen


@pytest.mark.parametrize("tools, field", [
    ([{"description": "no name"}], "tools[0].name"),
    ([{"name": "f", "parameters": {"type": "array"}}], "tools[0].parameters.type"),
    ([{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}},
                                   "required": ["b"]}}], "tools[0].parameters.required"),
    ([{"name": "f", "parameters": {"type": "object", "properties": []}}], "tools[0].parameters.properties"),
    ([3], "tools[0]"),
    (7, "tools"),
])
def test_tools_that_are_not_json_schema(tools, field):
    record = {"tools": tools, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(RecordError) as info:
        read(record)
    assert (info.value.code, info.value.field) == ("bad_tool_schema", field), info.value.message


def test_xlam_python_type_names_are_schema_types_but_typos_are_not():
    ok = {"name": "f", "parameters": {"a": {"type": "str, optional"}, "b": {"type": "List[int]"}}, "required": ["a"]}
    record = {"tools": [ok], "messages": [{"role": "user", "content": "q"},
                                          {"role": "tool_call", "content": '{"name": "f", "arguments": {}}'},
                                          {"role": "tool", "content": "x"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(RecordError) as info:              # function-level `required` is honoured
        read(record)
    assert info.value.code == "missing_tool_argument"
    record["messages"][1]["content"] = '{"name": "f", "arguments": {"a": "x"}}'
    assert read(record).turns[1].tool_calls == [ToolCall("f", {"a": "x"})]
    ok["parameters"]["b"]["type"] = "Lst of int"
    with pytest.raises(RecordError) as info:
        read(record)
    assert info.value.code == "bad_tool_schema"


def test_a_call_with_no_result_before_the_next_user_turn():
    record = {"tools": [{"name": "f"}], "messages": [
        {"role": "user", "content": "q"}, {"role": "tool_call", "content": '{"name": "f", "arguments": {}}'},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(RecordError) as info:
        read(record)
    assert (info.value.code, info.value.field) == ("bad_role_order", "messages[2]")
