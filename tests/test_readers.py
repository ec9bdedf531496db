"""Readers: every input format -> canonical Conversation / PreferencePair, and every error code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qvq_tune.data.messages import Conversation, Media, Origin, Part, PreferencePair, Turn
from qvq_tune.data.quarantine import RecordError
from qvq_tune.data.readers import ReaderOptions, parse
from qvq_tune.data.readers import base
from qvq_tune.data.readers.base import check_roles

TEMPLATES = Path(__file__).resolve().parents[1] / "data_templates"
ORIGIN = Origin("test.jsonl", line=1)
URI = "data:image/png;base64,iVBORw0KGgo="


def read(record, fmt="auto", columns=None):
    return parse(record, ORIGIN, ReaderOptions(format=fmt, columns=columns or {}))


def fails(record, code, field, fmt="auto", columns=None):
    with pytest.raises(RecordError) as info:
        read(record, fmt, columns)
    assert (info.value.code, info.value.field) == (code, field), info.value.message
    return info.value


def shape(turn: Turn) -> list:
    """Parts as compact tuples: ("text", s) / ("image", source) / ("video", source or frames)."""
    return [("text", p.text) if p.kind == "text" else (p.kind, p.media.source or p.media.frames)
            for p in turn.parts]


def image(src):
    return ("image", src)


def sg(*pairs, **extra):
    """A ShareGPT record from alternating human/gpt values."""
    conv = [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(pairs)]
    return {"conversations": conv, **extra}


def matching_readers(record) -> list[str]:
    base._load_all()
    return [name for name, (detect, _) in base._READERS.items() if detect(record)]


# ---------------------------------------------------------------- sharegpt / LLaMA-Factory

def test_sharegpt_multi_turn_images_in_later_turns():
    ex = read(sg("<image>What is this?", "A square.", "Compare <image> with <image>, please.", "Same size.",
                 images=["a.png", "b.png", "c.png"], system="Be brief."))
    assert isinstance(ex, Conversation)
    assert [t.role for t in ex.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert shape(ex.turns[1]) == [image("a.png"), ("text", "What is this?")]
    assert shape(ex.turns[3]) == [("text", "Compare "), image("b.png"), ("text", " with "),
                                  image("c.png"), ("text", ", please.")]
    assert ex.turns[0].text == "Be brief."


def test_sharegpt_role_content_and_reasoning_keys():
    for key in ("reasoning_content", "reasoning", "thinking"):
        ex = read({"messages": [{"role": "user", "content": "q"},
                                {"role": "assistant", "content": "42", key: "trace"}]})
        assert (ex.turns[-1].reasoning, ex.turns[-1].text) == ("trace", "42")


def test_sharegpt_inline_think_and_qvq_final_answer():
    ex = read(sg("q", "<think>\nstep\n</think>\n\nfour", "again?",
                 "I count again.\n\n**Final Answer**\n\n\\[ \\boxed{4} \\]"))
    assert (ex.turns[1].reasoning, ex.turns[1].text) == ("step", "four")
    assert (ex.turns[3].reasoning, ex.turns[3].text) == ("I count again.", "4")


def test_sharegpt_video_file_and_frames_and_single_path():
    ex = read(sg("<video><video>Which moves?", "the dot", videos=["clip.mp4", ["f0.png", "f1.png"]]))
    assert shape(ex.turns[0]) == [("video", "clip.mp4"), ("video", ("f0.png", "f1.png")),
                                  ("text", "Which moves?")]
    ex = read(sg("<image>Hi", "ok", images="one.png"))
    assert shape(ex.turns[0]) == [image("one.png"), ("text", "Hi")]


def test_sharegpt_dpo_llamafactory_shape():
    ex = read({"conversations": [{"from": "human", "value": "<image>How many?"}],
               "chosen": {"from": "gpt", "value": "<think>count</think>2"},
               "rejected": {"role": "assistant", "content": "3"}, "images": ["s.png"]})
    assert isinstance(ex, PreferencePair)
    assert shape(ex.prompt[0]) == [image("s.png"), ("text", "How many?")]
    assert (ex.chosen.reasoning, ex.chosen.text, ex.rejected.text) == ("count", "2", "3")


def test_swift3_messages_rows_and_rejected_response():
    row = {"messages": [{"role": "user", "content": "<image>Colour?"},
                        {"role": "assistant", "content": "red"}], "images": ["r.png"]}
    assert matching_readers(row) == ["sharegpt"]
    assert shape(read(row).turns[0]) == [image("r.png"), ("text", "Colour?")]
    pair = read({**row, "rejected_response": "blue"})
    assert isinstance(pair, PreferencePair)
    assert (len(pair.prompt), pair.chosen.text, pair.rejected.text) == (1, "red", "blue")


# ---------------------------------------------------------------- LLaVA

def test_llava_placeholder_and_implicit_image():
    ex = read(sg("<image>\nWhat colour?", "Red.", "Shape?", "Square.", image="a.png"))
    assert shape(ex.turns[0]) == [image("a.png"), ("text", "What colour?")]
    ex = read(sg("Describe.", "A circle.", image="b.png"))           # no placeholder: image first
    assert shape(ex.turns[0]) == [image("b.png"), ("text", "Describe.")]
    ex = read(sg("Look: <image> and <image>", "ok", image=["a.png", "b.png"]))
    assert shape(ex.turns[0]) == [("text", "Look: "), image("a.png"), ("text", " and "), image("b.png")]


def test_llava_video_only_uses_image_placeholder():
    ex = read(sg("<image>\nWhat happens?", "It moves.", video="clip.mp4"))
    assert shape(ex.turns[0]) == [("video", "clip.mp4"), ("text", "What happens?")]


# ---------------------------------------------------------------- OpenAI / Qwen / TRL messages

def test_messages_parts_data_uri_url_and_video():
    ex = read({"messages": [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": URI}},
            {"type": "image_url", "image_url": "https://example.com/x.png"},
            {"type": "image", "image": "file:///data/a.png"},
            {"image": "b.png"}, {"text": "and"},                       # Qwen: untyped parts
            {"type": "video", "video": "clip.mp4"},
            {"type": "video", "video": ["f0.png", "f1.png"]},
            {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Things."}], "reasoning_content": "r"}]})
    assert shape(ex.turns[0]) == [image(URI), image("https://example.com/x.png"), image("/data/a.png"),
                                  image("b.png"), ("text", "and"), ("video", "clip.mp4"),
                                  ("video", ("f0.png", "f1.png")), ("text", "What?")]
    assert (ex.turns[1].text, ex.turns[1].reasoning) == ("Things.", "r")


def test_messages_multi_turn_with_image_in_later_turn():
    ex = read({"messages": [
        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": [{"type": "image", "image": "late.png"}, {"type": "text", "text": "This?"}]},
        {"role": "assistant", "content": "A dog."}]})
    assert shape(ex.turns[0]) == [("text", "Hello")]
    assert shape(ex.turns[2]) == [image("late.png"), ("text", "This?")]


def test_messages_trl_image_parts_bind_top_level_images():
    ex = read({"images": ["a.png", "b.png"], "prompt": [{"role": "user", "content": [
        {"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]}],
        "chosen": [{"role": "assistant", "content": "No."}], "rejected": [{"role": "assistant", "content": "Yes."}]})
    assert isinstance(ex, PreferencePair)
    assert shape(ex.prompt[0]) == [image("a.png"), image("b.png"), ("text", "Same?")]
    assert (ex.chosen.text, ex.rejected.text) == ("No.", "Yes.")


def test_messages_trl_string_prompt_and_completion():
    pair = read({"prompt": "<image>Colour?", "images": "a.png", "chosen": "red", "rejected": "blue"})
    assert shape(pair.prompt[0]) == [image("a.png"), ("text", "Colour?")]
    conv = read({"prompt": [{"role": "user", "content": "2+2?"}],
                 "completion": [{"role": "assistant", "content": "<think>add</think>4"}]})
    assert isinstance(conv, Conversation) and (conv.turns[1].reasoning, conv.turns[1].text) == ("add", "4")


@pytest.mark.parametrize("keys", [("chosen_messages", "rejected_messages"), ("chosen", "rejected")])
def test_messages_full_conversation_pairs(keys):
    user = {"role": "user", "content": [{"type": "image", "image": URI}, {"type": "text", "text": "Shape?"}]}
    ex = read({keys[0]: [user, {"role": "assistant", "content": "triangle"}],
               keys[1]: [user, {"role": "assistant", "content": "square"}]})
    assert isinstance(ex, PreferencePair)
    assert shape(ex.prompt[0]) == [image(URI), ("text", "Shape?")]
    assert (ex.chosen.text, ex.rejected.text) == ("triangle", "square")


def test_messages_full_pairs_must_share_prefix():
    fails({"chosen_messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]},
                               {"role": "assistant", "content": "x"}],
           "rejected_messages": [{"role": "user", "content": [{"type": "text", "text": "b"}]},
                                 {"role": "assistant", "content": "y"}]},
          "bad_field_type", "rejected_messages")


# ---------------------------------------------------------------- ms-swift query/response/history

def test_swift_history_inline_img_and_placeholders():
    ex = read({"system": "sys", "history": [["<image>First?", "one"], ["Then?", "two"]],
               "query": "Compare <img>inline.png</img> with <image>", "response": "same",
               "images": ["h.png", "q.png"]})
    assert [t.role for t in ex.turns] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert shape(ex.turns[1]) == [image("h.png"), ("text", "First?")]
    assert shape(ex.turns[5]) == [("text", "Compare "), image("inline.png"), ("text", " with "), image("q.png")]


def test_swift_images_without_placeholder_go_first_and_dpo():
    ex = read({"history": [["Hi", "Hello"]], "query": "What?", "response": "x", "images": "a.png"})
    assert shape(ex.turns[0]) == [image("a.png"), ("text", "Hi")]
    pair = read({"query": "q", "response": "<think>t</think>good", "rejected_response": "bad"})
    assert isinstance(pair, PreferencePair) and (pair.chosen.reasoning, pair.rejected.text) == ("t", "bad")


# ---------------------------------------------------------------- LLaMA-Factory v1 (tests/data/llamafactory_v1)

DATA = Path(__file__).resolve().parent / "data"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_llamafactory_v1_sft_rows_with_loss_weights():
    rows = jsonl(DATA / "llamafactory_v1" / "v1_sft_demo.jsonl")
    for row in rows:
        ex = read(row)
        assert isinstance(ex, Conversation) and [t.role for t in ex.turns] == ["user", "assistant"]
        assert ex.turns[1].loss_weight == 1.0 and ex.turns[1].text.startswith(("Hello!", "I am"))
    assert read(rows[0]).turns[0].text == "hi"


def test_llamafactory_v1_multimodal_multi_turn_image_url_values():
    rows = jsonl(DATA / "llamafactory_v1" / "v1_multimodal_demo.jsonl")
    ex = read(rows[0])
    assert [t.role for t in ex.turns] == ["user", "assistant", "user", "assistant"]
    assert shape(ex.turns[0]) == [image("data/mllm_demo_data/1.jpg"), ("text", "Who are they?")]
    assert shape(ex.turns[2]) == [("text", "What are they doing?"), image("data/mllm_demo_data/1.jpg")]
    assert ex.turns[3].text == "They are celebrating on the soccer field."
    assert [shape(read(r).turns[0])[0] for r in rows[1:]] == [image("data/mllm_demo_data/2.jpg"),
                                                             image("data/mllm_demo_data/3.jpg")]


def v1_video_record(*weights: float) -> dict:
    """LLaMA-Factory's own v1 video record (what its converter writes, see tests/data/SOURCES.md)
    with reply weights set, then a second exchange whose reply has a reasoning part."""
    record = jsonl(DATA / "llamafactory_v1" / "converter_multimodal.jsonl")[0]
    record["messages"][1]["loss_weight"] = weights[0]
    record["messages"] += [
        {"role": "user", "content": [{"type": "text", "value": "How many frames?"}], "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "reasoning", "value": "I count them."},
                                          {"type": "text", "value": "Four."}], "loss_weight": weights[1]}]
    return record


def test_llamafactory_v1_video_reasoning_parts_and_weights():
    ex = read(v1_video_record(0.0, 2.0))
    assert shape(ex.turns[0]) == [("text", "What is "), image("/p/a.jpg"), ("text", " and what happens in "),
                                  ("video", "/p/v.mp4"), ("text", "?")]
    assert [(t.loss_weight, t.reasoning, t.text) for t in ex.turns if t.role == "assistant"] == [
        (0.0, None, "An image and a video."), (2.0, "I count them.", "Four.")]


def test_llamafactory_v1_dpo_chosen_and_rejected_messages():
    rows = jsonl(DATA / "llamafactory_v1" / "v1_dpo_demo.jsonl")
    for row in rows:
        pair = read(row)
        assert isinstance(pair, PreferencePair) and [t.role for t in pair.prompt] == ["system", "user"]
        assert pair.chosen.text != pair.rejected.text
    assert read(rows[1]).chosen.text == "D: considerate"
    user = {"role": "user", "content": [{"type": "image_url", "value": "s.png"},
                                        {"type": "text", "value": "How many?"}], "loss_weight": 0.0}
    pair = read({"chosen_messages": [user, {"role": "assistant", "content": [{"type": "text", "value": "2"}]}],
                 "rejected_messages": [user, {"role": "assistant", "content": [{"type": "text", "value": "3"}]}]})
    assert shape(pair.prompt[0]) == [image("s.png"), ("text", "How many?")]


def test_swift_loss_and_loss_scale_keys():
    ex = read({"messages": [{"role": "user", "content": "Hello!"},
                            {"role": "assistant", "content": "Hi, how can I help you?", "loss": False},
                            {"role": "user", "content": "What is 1+1?"},
                            {"role": "assistant", "content": "It equals 2", "loss_scale": 2.0}]})
    assert [t.loss_weight for t in ex.turns if t.role == "assistant"] == [0.0, 2.0]


# ---------------------------------------------------------------- ms-swift conversation rows

def test_swift_conversation_rows_from_its_own_test_data():
    rows = jsonl(DATA / "ms_swift" / "sharegpt.jsonl")
    assert [matching_readers(r) for r in rows] == [["swift"]] * 3
    first, _, third = (read(r) for r in rows)
    assert [(t.role, t.text) for t in first.turns] == [("system", "00000"), ("user", "11111"),
                                                      ("assistant", "22222")]
    assert [t.text for t in third.turns] == ["AAAAA", "BBBBB", "CCCCC", "DDDDD", "EEEEE", "FFFFF"]


def test_swift_conversation_rows_with_images():
    ex = read({"system": "Be brief.", "images": ["a.png", "b.png"], "conversation": [
        {"human": "<image>What is this?", "assistant": "A square."},
        {"user": "And this <image>?", "gpt": "<think>round</think>A circle."}]})
    assert shape(ex.turns[1]) == [image("a.png"), ("text", "What is this?")]
    assert shape(ex.turns[3]) == [("text", "And this "), image("b.png"), ("text", "?")]
    assert (ex.turns[4].reasoning, ex.turns[4].text) == ("round", "A circle.")
    ex = read({"conversation": [{"human": "Describe.", "assistant": "Dots."}], "images": "c.png"})
    assert shape(ex.turns[0]) == [image("c.png"), ("text", "Describe.")]       # no placeholder: first


# ---------------------------------------------------------------- numbers as text, reasoning-dataset fields

def test_numbers_and_booleans_are_text():
    ex = read({"question": "How many?", "answer": 4, "images": ["a.png"]})
    assert ex.turns[-1].text == "4"
    assert read({"question": "Round?", "answer": True}).turns[-1].text == "true"
    assert read({"question": 2.5, "answer": 0.5}).turns[0].text == "2.5"
    assert read(sg("1+1?", 2)).turns[1].text == "2"
    assert read({"query": 7, "response": 8}).turns[-1].text == "8"
    ex = read({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]},
                            {"role": "assistant", "content": [{"type": "text", "value": 4}]}]})
    assert (ex.turns[0].text, ex.turns[1].text) == ("3", "4")


def test_reasoning_dataset_fields_are_read_and_reported():
    counting = jsonl(DATA / "r1v" / "superclevr_test200_counting_problems.jsonl")
    ex = read(counting[0])
    assert shape(ex.turns[0]) == [image("./images/superCLEVR_new_025000.png"),
                                  ("text", "How many different items are there in the image?")]
    assert ex.turns[1].text == "4" and ex.meta["aliases"] == {"answer": "ground_truth", "images": "image_path"}
    ex = read({"problem": "How many items?", "solution": "<answer> 3 </answer>", "image": "c.png"})   # R1-V
    assert (ex.turns[1].text, ex.turns[1].reasoning) == ("<answer> 3 </answer>", None)
    assert ex.meta["aliases"] == {"question": "problem", "answer": "solution"}
    ex = read({"problem": "2x = 6", "solution": "Divide by 2.", "ground_truth": 3})    # worked solution + answer
    assert (ex.turns[1].reasoning, ex.turns[1].text) == ("Divide by 2.", "3")
    assert ex.meta["aliases"] == {"question": "problem", "answer": "ground_truth", "reasoning": "solution"}
    assert "aliases" not in read({"question": "q", "answer": "a"}).meta
    # never applied to message-list records, and --columns comes first
    assert isinstance(read({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                            "solution": "x"}), Conversation)
    ex = read({"problem": "p", "ground_truth": "g", "label": "l"}, columns={"answer": "label"})
    assert ex.turns[1].text == "l" and ex.meta["aliases"] == {"question": "problem"}


# ---------------------------------------------------------------- native, column mapping, role check

def test_native_checks_roles():
    ex = read({"images": ["a.png"], "question": "q", "answer": "a"})
    assert [t.role for t in ex.turns] == ["user", "assistant"]
    fails({"question": "q", "answer": "  "}, "empty_assistant", "answer")


def test_column_mapping_every_format():
    ex = read({"dialog": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "ok"}],
               "pics": "p.png"}, columns={"messages": "dialog", "images": "pics"})
    assert shape(ex.turns[0]) == [image("p.png"), ("text", "Hi")]
    ex = read({"chat": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}], "img": "i.png"},
              columns={"conversations": "chat", "image": "img"})
    assert shape(ex.turns[0]) == [image("i.png"), ("text", "x")]
    ex = read({"q": "x", "a": "y"}, columns={"query": "q", "response": "a"})
    assert ex.turns[-1].text == "y"
    ex = read({"problem": "p", "solution": "s", "image_path": "i.png"},
              columns={"question": "problem", "answer": "solution", "images": "image_path"})
    assert shape(ex.turns[0]) == [image("i.png"), ("text", "p")]


def test_check_roles_directly():
    u, a, s = (Turn(r, [Part.of_text("x")]) for r in ("user", "assistant", "system"))
    check_roles([s, u, a, u, a])
    check_roles([u, a, u], prompt=True)
    for turns, prompt, code in [([a, u], False, "bad_role_order"), ([u, s, a], False, "bad_role_order"),
                                ([u, u, a], False, "bad_role_order"), ([s, u], False, "empty_assistant"),
                                ([s], False, "empty_assistant"), ([u, a], True, "bad_role_order"),
                                ([u, Turn("assistant", [Part.of_text(" ")])], False, "empty_assistant")]:
        with pytest.raises(RecordError) as info:
            check_roles(turns, prompt=prompt)
        assert info.value.code == code, (turns, prompt)


# ---------------------------------------------------------------- every error code names its field

def _msgs(*contents):
    return {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": c}
                         for i, c in enumerate(contents)]}


ERRORS = [
    ({"foo": 1}, "unknown_schema", None),
    (sg("<image>hi", "ok", images=["a.png"], system=["s"]), "bad_field_type", "system"),
    ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}, "missing_field", "conversations[0].value"),
    ({"conversations": [{"value": "hi"}, {"from": "gpt", "value": "x"}]}, "missing_field", "conversations[0].role"),
    ({"messages": []}, "missing_field", "messages"),
    ({"query": None, "response": "x"}, "missing_field", "query"),
    ({"query": "q"}, "missing_field", "response"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": None}, "missing_field", "rejected"),
    (sg({"text": "q"}, "x"), "bad_field_type", "conversations[0].value"),
    ({"conversations": "hi"}, "bad_field_type", "conversations"),
    ({"conversations": ["hi"]}, "bad_field_type", "conversations[0]"),
    (sg("hi", "x", images=[3]), "bad_field_type", "images"),
    ({**_msgs([{"type": "audio", "audio": "a.wav"}], "x")}, "bad_field_type", "messages[0].content[0].type"),
    ({**_msgs([{"type": "text", "text": [1]}], "x")}, "bad_field_type", "messages[0].content[0].text"),
    ({**_msgs([{"type": "text", "text": "q"}], [{"type": "image", "image": "a.png"}])},
     "bad_field_type", "messages[1].content[0]"),
    ({"query": "q", "response": "r", "history": [["only one"]]}, "bad_field_type", "history[0]"),
    ({"query": "q", "response": "r", "history": "nope"}, "bad_field_type", "history"),
    (sg("<image>a", "x", "<image>b", "y", images=["a.png"]), "placeholder_mismatch", "conversations[2].value"),
    (sg("<image>a", "x", images=["a.png", "b.png"]), "placeholder_mismatch", "images"),
    (sg("<image>a", "x", images=["a.png"], videos=["v.mp4"]), "placeholder_mismatch", "videos"),
    (sg("a", "x", images=["a.png"]), "placeholder_mismatch", "images"),       # ShareGPT is strict
    (sg("<image>a", "x", image=["a.png", "b.png"]), "placeholder_mismatch", "image"),  # LLaVA: partial
    ({**_msgs([{"type": "image"}, {"type": "text", "text": "q"}], "x")},
     "placeholder_mismatch", "messages[0].content[0]"),
    ({"query": "<image>q", "response": "r"}, "placeholder_mismatch", "query"),
    (sg("hi"), "empty_assistant", "conversations[0]"),
    (sg("hi", ""), "empty_assistant", "conversations[1].value"),
    (sg("hi", "<think>only a trace</think>"), "empty_assistant", "conversations[1].value"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                   {"role": "assistant", "content": None}]}, "empty_assistant", "messages[1].content"),
    ({"query": "q", "response": ""}, "empty_assistant", "response"),
    (sg("a", "b", "c", "d", "e"), "empty_assistant", "conversations[4]"),
    ({"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
     "bad_role_order", "conversations[0]"),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"},
                        {"from": "gpt", "value": "z"}]}, "bad_role_order", "conversations[1]"),
    ({"conversations": [{"from": "narrator", "value": "x"}]}, "bad_role_order", "conversations[0].from"),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "{}"},
                        {"from": "observation", "value": "{}"}]}, "tool_call_not_json", "conversations[1].value"),
    ({"messages": [{"role": 1, "content": "x"}]}, "bad_field_type", "messages[0].role"),
    (sg("a", "b", system="s", conversations=[{"from": "system", "value": "t"}, {"from": "human", "value": "a"},
                                             {"from": "gpt", "value": "b"}]), "bad_role_order", "conversations[0]"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
      "chosen": {"from": "gpt", "value": "x"}, "rejected": {"from": "gpt", "value": "y"}},
     "bad_role_order", "conversations[1]"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "x"},
      "rejected": "y"}, "bad_role_order", "chosen.from"),
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": "c"}, "bad_field_type", "chosen"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss_weight": -1}]},
     "bad_field_type", "messages[1].loss_weight"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss_weight": "1"}]},
     "bad_field_type", "messages[1].loss_weight"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss": "no"}]},
     "bad_field_type", "messages[1].loss"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "value": "q"}]},
                   {"role": "assistant", "content": [{"type": "tool_call", "value": "{}"}]}]},
     "tool_call_not_json", "messages[1].content[0].value"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "value": "q"}]},
                   {"role": "assistant", "content": [{"type": "image", "value": "a.png"}]}]},
     "bad_field_type", "messages[1].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "reasoning", "value": "q"}]},
                   {"role": "assistant", "content": "a"}]}, "bad_field_type", "messages[0].content[0].type"),
    ({"conversation": "hi"}, "bad_field_type", "conversation"),
    ({"conversation": [{"human": "q"}]}, "missing_field", "conversation[0].assistant"),
    ({"conversation": [{"human": "<image>q", "assistant": "a"}]}, "placeholder_mismatch", "conversation[0].human"),
    ({"question": "q", "ground_truth": [4]}, "bad_field_type", "ground_truth"),      # named as the file names it
    ({"q": "x", "a": [1]}, "bad_field_type", "a"),
]


@pytest.mark.parametrize("record,code,field", ERRORS, ids=[f"{c}:{f}" for _, c, f in ERRORS])
def test_error_codes_name_the_field(record, code, field):
    error = fails(record, code, field, columns={"question": "q", "answer": "a"} if "q" in record else None)
    if field in ("ground_truth", "a"):          # renamed by an alias or --columns: the file's own name
        assert f"field '{field}'" in error.message


def test_detectors_are_disjoint():
    """No record, however its keys combine, is claimed by two readers."""
    from itertools import combinations
    parts = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
    fields = {"question": "q", "answer": "a", "chosen": "c", "rejected": "r", "conversations": [],
              "image": "i.png", "video": "v.mp4", "query": "q", "prompt": "p", "completion": "c",
              "chosen_messages": [], "rejected_messages": [], "conversation": []}
    for messages in (None, [{"role": "user", "content": "q"}], parts):
        for n in range(len(fields) + 1):
            for keys in combinations(fields, n):
                record = {k: fields[k] for k in keys}
                if messages is not None:
                    record["messages"] = messages
                assert len(matching_readers(record)) <= 1, (record, matching_readers(record))


def test_explicit_format_bypasses_detection():
    ex = read(sg("<image>\nhi", "ok", images=["a.png"]), fmt="llava")
    assert shape(ex.turns[0]) == [image("a.png"), ("text", "hi")]
    fails({"query": "q"}, "missing_field", "conversations", fmt="sharegpt")


# ---------------------------------------------------------------- data templates

EXPECTED_FORMAT = {"native.jsonl": "native", "native_dpo.jsonl": "native", "sharegpt.json": "sharegpt",
                   "sharegpt_dpo.json": "sharegpt", "llava.json": "llava", "messages.jsonl": "messages",
                   "messages_dpo.jsonl": "messages", "swift.jsonl": "swift", "custom_columns.jsonl": "native",
                   "llamafactory_v1.jsonl": "messages", "llamafactory_v1_dpo.jsonl": "messages",
                   "swift_conversation.jsonl": "swift", "reasoning_fields.jsonl": "native",
                   # one row per format, each with tools (native, OpenAI, ShareGPT, v1, ms-swift agent)
                   "tools.jsonl": ("native", "messages", "sharegpt", "messages", "sharegpt")}
COLUMNS = {"custom_columns.jsonl": {"question": "problem", "answer": "solution", "images": "image_path"}}
DPO = {"native_dpo.jsonl", "sharegpt_dpo.json", "messages_dpo.jsonl", "llamafactory_v1_dpo.jsonl"}


def _records(path: Path) -> list[dict]:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _media_paths(media: Media) -> list[str]:
    if media.frames:
        return list(media.frames)
    return [] if media.source.startswith("data:") else [media.source]


def test_every_template_is_listed():
    assert {p.name for p in TEMPLATES.glob("*.json*")} == set(EXPECTED_FORMAT)
    assert sum(p.stat().st_size for p in (TEMPLATES / "images").rglob("*.png")) < 100_000


@pytest.mark.parametrize("name", sorted(EXPECTED_FORMAT))
def test_templates_parse_with_auto_detection(name):
    path = TEMPLATES / name
    records = _records(path)
    assert 2 <= len(records) <= 5
    for i, raw in enumerate(records):
        record = base.apply_columns(raw, COLUMNS.get(name, {}))
        record = base.apply_columns(record, base.field_aliases(record))
        expected = EXPECTED_FORMAT[name]
        assert matching_readers(record) == [expected if isinstance(expected, str) else expected[i]], (name, i)
        ex = parse(raw, Origin(str(path), line=i + 1), ReaderOptions(columns=COLUMNS.get(name, {})))
        assert isinstance(ex, PreferencePair if name in DPO else (Conversation, PreferencePair))
        assert ex.media, f"{name}[{i}] references no image"
        for media in ex.media:
            for rel in _media_paths(media):
                assert (path.parent / rel).is_file(), f"{name}[{i}]: {rel} does not exist"
