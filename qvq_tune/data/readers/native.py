"""qvq-tune's native JSONL.

SFT:  {"images": [...] | "video": ..., "question", "reasoning"?, "answer", "system"?}
DPO:  {"images", "question", "chosen": {"reasoning"?, "answer"}, "rejected": {...}}
      (chosen / rejected may also be plain strings; reasoning is then split from them)
With tools: {"tools": [...], "steps": [{"reasoning"?, "tool_calls": [{"name", "arguments"}],
      "results": ["..."]}, ...], then the final "reasoning"? and "answer"}: each step is an
      assistant turn (its reasoning, then its calls) and one tool-result turn per result.
The reasoning may also be inline in `answer` (between think tags, or QVQ's trace
followed by "**Final Answer**"). Reasoning-dataset names (`problem`, `ground_truth`,
`solution`, `image_path`) reach these fields through `base.field_aliases`.
"""

from __future__ import annotations

import json

from ..messages import Conversation, Media, Origin, Part, PreferencePair, Turn
from ..quarantine import RecordError
from ..reasoning import THINK_TOKENS, read_reply
from .base import REASONING_KEYS, as_list, check_roles, register, require_text, text_of
from .tools import check_calls, read_calls, read_tools


def is_native(r: dict) -> bool:
    return "question" in r and ("answer" in r or ("chosen" in r and "rejected" in r))


def media_of(record: dict) -> list[Media]:
    media = [Media("image", **media_source(x, "images")) for x in as_list(record.get("images", record.get("image")), "images")]
    video = record.get("videos", record.get("video"))
    if video is not None:
        if isinstance(video, list) and video and all(isinstance(v, str) for v in video) and "videos" not in record:
            media.append(Media("video", frames=tuple(video)))     # one video given as frames
        else:
            media += [Media("video", **media_source(v, "videos")) for v in as_list(video, "videos")]
    return media


def media_source(value, key: str) -> dict:
    if isinstance(value, str):
        return {"source": value}
    if isinstance(value, (bytes, bytearray)):
        return {"data": bytes(value)}
    if isinstance(value, dict):  # HF Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return {"data": bytes(value["bytes"]), "source": value.get("path")}
        if value.get("path"):
            return {"source": value["path"]}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {"frames": tuple(value)}
    raise RecordError("bad_field_type", f"field '{key}' holds {type(value).__name__}, expected a path",
                      field=key)


def reply_turn(value, key: str, reasoning: str | None = None) -> Turn:
    """An assistant turn from an answer string (reasoning maybe inline) or a {reasoning, answer} dict."""
    if isinstance(value, dict):
        found = next((k for k in REASONING_KEYS if value.get(k)), None)
        reasoning = text_of(value[found], f"{key}.{found}") if found else reasoning
        value = value.get("answer", value.get("content"))
    if value is None:
        raise RecordError("missing_field", f"field '{key}' must hold the answer text", field=key)
    value = text_of(value, key)
    read_as = "field" if reasoning else "answer-only"
    if reasoning is None:
        reasoning, value, read_as = read_reply(value)
    elif any(marker in value for marker in THINK_TOKENS):
        raise RecordError("think_marker_in_answer", f"field '{key}' holds a think marker although the "
                          "reply's reasoning is given apart; a trace leaked into the answer", field=key)
    if not value.strip():
        raise RecordError("empty_assistant", f"field '{key}' is empty", field=key)
    return Turn("assistant", [Part.of_text(value)], reasoning=reasoning, read_as=read_as)


def prompt_turns(record: dict) -> list[Turn]:
    turns = []
    system = require_text(record, "system", optional=True)
    if system:
        turns.append(Turn("system", [Part.of_text(system)]))
    question = require_text(record, "question")
    turns.append(Turn("user", [*(Part.of_media(m) for m in media_of(record)), Part.of_text(question)]))
    return turns


@register("native", is_native)
def read_native(record: dict, origin: Origin):
    prompt = prompt_turns(record)
    names = ["system"] * (len(prompt) - 1) + ["question"]
    if "chosen" in record and "rejected" in record and "answer" not in record:
        check_roles(prompt, prompt=True, names=names)
        return PreferencePair(prompt, reply_turn(record["chosen"], "chosen"),
                              reply_turn(record["rejected"], "rejected"), origin,
                              meta={k: record[k] for k in ("id", "rejected_kind") if k in record})
    found = next((k for k in REASONING_KEYS if record.get(k)), None)
    reasoning = text_of(record[found], found) if found else None
    answer = reply_turn(record.get("answer"), "answer", reasoning)
    tools = read_tools(record.get("tools"))
    steps, step_names = tool_steps(record.get("steps"))
    turns, names = prompt + steps + [answer], names + step_names + ["answer"]
    check_roles(turns, names=names)
    check_calls(turns, tools, names)
    return Conversation(turns, origin, meta={k: record[k] for k in ("id",) if k in record}, tools=tools)


def tool_steps(steps) -> tuple[list[Turn], list[str]]:
    """The turns of native `steps`: per step an assistant turn (reasoning, calls), then its results."""
    if steps is None:
        return [], []
    if not isinstance(steps, list):
        raise RecordError("bad_field_type", "field 'steps' must be a list of steps", field="steps")
    turns, names = [], []
    for i, step in enumerate(steps):
        name = f"steps[{i}]"
        if not isinstance(step, dict):
            raise RecordError("bad_field_type", f"field '{name}' must be an object", field=name)
        reasoning = require_text(step, "reasoning", optional=True)
        calls = read_calls(step.get("tool_calls"), f"{name}.tool_calls") if step.get("tool_calls") else []
        text = require_text(step, "text", optional=True) or ""
        turns.append(Turn("assistant", [Part.of_text(text)] if text else [], reasoning=reasoning,
                          read_as="field" if reasoning else "answer-only", tool_calls=calls))
        names.append(f"{name}.tool_calls")
        results = step.get("results") or []
        if not isinstance(results, list):
            raise RecordError("bad_field_type", f"field '{name}.results' must be a list", field=f"{name}.results")
        for j, result in enumerate(results):
            field = f"{name}.results[{j}]"
            turns.append(Turn("tool", [Part.of_text(text_of(result, field) if not isinstance(result, (dict, list))
                                                    else json.dumps(result, ensure_ascii=False))]))
            names.append(field)
    return turns, names
