"""ShareGPT / LLaMA-Factory / ms-swift message lists with string content.

SFT  {"conversations" | "messages": [{"from": "human", "value": "<image>Describe."},
                                     {"from": "gpt", "value": "(think tags around a trace) A cat"}],
      "images": [...], "videos": [...], "system"?}
DPO  LLaMA-Factory: {"conversations": [...prompt, ending with user...],
                     "chosen": {"from": "gpt", "value": ...}, "rejected": {...}}
     ms-swift:      {"messages": [..., {"role": "assistant", ...chosen}], "rejected_response": "..."}

Messages use `from`/`value` or `role`/`content`. The n-th `<image>` (`<video>`) placeholder
in the user and system turns binds to the n-th entry of `images` (`videos`); the counts must
match. A line break next to a placeholder is layout and is dropped. An assistant's
reasoning is inline (think tags, QVQ's "**Final Answer**"), in `reasoning_content` /
`reasoning` / `thinking` on the message, or a `{"type": "reasoning"}` content part
(LLaMA-Factory v1). An assistant message's loss weight is its `loss_weight`
(LLaMA-Factory v1), `loss_scale` or `loss: false` (ms-swift); weights on other roles are
ignored, since only assistant replies carry loss.

Tools (`readers/tools.py`): the record's `tools` column (a JSON string or a list); a tool call
is a `function_call` turn (LLaMA-Factory) or `tool_call` turn (ms-swift) whose value is the
call's JSON (or a list of calls), or an assistant message's `tool_calls` (OpenAI / TRL), or a
`{"type": "tool_call"}` content part (LLaMA-Factory v1); a tool result is an `observation`,
`tool`, `tool_response`, `function` or `ipython` turn. An assistant turn followed by a turn
holding only calls is one turn (its text, then the calls), as are consecutive call turns.

Detection: a `conversations` key without a singular `image`/`video` key (that is LLaVA),
or a `messages` key with no list-of-parts content. A `messages` list holding any
list-of-parts content belongs to `readers/messages.py`.

This module also owns what the other message-list readers (llava, messages, swift) share:
role names, placeholder binding (`MediaBinder`), assistant turns with their loss weights,
and turn building (`read_dialogue`).
"""

from __future__ import annotations

import math
import re
from typing import Callable

import json

from ..messages import Conversation, Media, Origin, Part, PreferencePair, Turn
from ..quarantine import RecordError
from .base import REASONING_KEYS, check_roles, register, require_text, text_of
from .native import is_native, media_of, reply_turn
from .tools import check_calls, read_calls, read_tools

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "chatgpt": "assistant", "model": "assistant", "bot": "assistant", "system": "system"}
TOOL_ROLES = {"observation": "tool", "function": "tool", "tool": "tool", "ipython": "tool",
              "tool_response": "tool", "function_call": "call", "tool_call": "call"}
PLACEHOLDER = re.compile(r"<(image|video)>")

ContentParser = Callable[[object, str, "MediaBinder"], list[Part]]


def has_list_content(messages) -> bool:
    """Whether any message's content is a list of parts (OpenAI / Qwen style)."""
    return isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content", m.get("value")), list) for m in messages)


def _is_sharegpt(r: dict) -> bool:
    if is_native(r):
        return False
    if "conversations" in r:
        return "image" not in r and "video" not in r
    return "messages" in r and not has_list_content(r["messages"])


def split_around(text: str, pattern: re.Pattern, make: Callable[[re.Match], Part]) -> list[Part]:
    """Text parts and `make(match)` parts in order; line breaks touching a match are dropped."""
    parts, pos = [], 0
    for m in pattern.finditer(text):
        before = text[pos:m.start()].rstrip("\r\n")
        if parts:                                   # it follows the previous match
            before = before.lstrip("\r\n")
        if before:
            parts.append(Part.of_text(before))
        parts.append(make(m))
        pos = m.end()
    tail = text[pos:].lstrip("\r\n") if parts else text
    if tail:
        parts.append(Part.of_text(tail))
    return parts


class MediaBinder:
    """Hands out a record's top-level media in order as placeholders are met."""

    def __init__(self, record: dict, tokens: dict[str, str] | None = None):
        media = media_of(record)
        self.queues = {k: [m for m in media if m.kind == k] for k in ("image", "video")}
        self.given = {k: len(q) for k, q in self.queues.items()}
        self.keys = {"image": "images" if "images" in record else "image",
                     "video": "videos" if "videos" in record else "video"}
        self.tokens = tokens or {"image": "image", "video": "video"}  # placeholder -> media kind
        self.used = 0

    def take(self, kind: str, field: str) -> Media:
        if not self.queues[kind]:
            raise RecordError("placeholder_mismatch", f"{field} refers to {kind} #{self.given[kind] + 1} "
                              f"but '{self.keys[kind]}' lists {self.given[kind]}", field=field)
        self.used += 1
        return self.queues[kind].pop(0)

    def split(self, text: str, field: str) -> list[Part]:
        return split_around(text, PLACEHOLDER,
                            lambda m: Part.of_media(self.take(self.tokens[m.group(1)], field)))

    def finish(self, implicit: Turn | None = None) -> None:
        """Check every medium was placed; with no placeholders at all, `implicit` takes them first."""
        left = self.queues["image"] + self.queues["video"]
        if implicit is not None and self.used == 0 and left:
            implicit.parts[:0] = [Part.of_media(m) for m in left]
            return
        for kind, queue in self.queues.items():
            if queue:
                placed = self.given[kind] - len(queue)
                raise RecordError("placeholder_mismatch", f"'{self.keys[kind]}' lists {self.given[kind]} "
                                  f"{kind}(s) but the text has {placed} <{kind}> placeholder(s)",
                                  field=self.keys[kind])


def string_content(value, field: str, binder: MediaBinder) -> list[Part]:
    return binder.split(text_of(value, field), field)


def _keys(msg: dict) -> tuple[str, str]:
    return ("from", "value") if "from" in msg else ("role", "content")


def _role(msg: dict, name: str) -> str:
    role_key = _keys(msg)[0]
    field, role = f"{name}.{role_key}", msg.get(role_key)
    if role is None:
        raise RecordError("missing_field", f"field '{field}' is missing", field=field)
    if not isinstance(role, str):
        raise RecordError("bad_field_type", f"field '{field}' must be a role name", field=field)
    if role.lower() in TOOL_ROLES:
        return TOOL_ROLES[role.lower()]
    if role.lower() not in ROLES:
        raise RecordError("bad_role_order", f"{field} is {role!r}: unknown role; use system/user/"
                          "assistant (or human/gpt), tool / observation for tool results", field=field)
    return ROLES[role.lower()]


def loss_weight(msg: dict, name: str) -> float:
    """An assistant message's loss weight: `loss: false` is 0, else `loss_scale` (ms-swift) or
    `loss_weight` (LLaMA-Factory v1), else 1."""
    if msg.get("loss") is not None:
        if not isinstance(msg["loss"], bool):
            raise RecordError("bad_field_type", f"field '{name}.loss' must be true or false",
                              field=f"{name}.loss")
        if not msg["loss"]:
            return 0.0
    key = next((k for k in ("loss_scale", "loss_weight") if msg.get(k) is not None), None)
    if key is None:
        return 1.0
    value = msg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise RecordError("bad_field_type", f"field '{name}.{key}' must be a number >= 0, got {value!r}",
                          field=f"{name}.{key}")
    return float(value)


def _reply_parts(parts: list, field: str) -> tuple[str, str | None, list]:
    """(text, reasoning, tool calls) of an assistant content list: text parts (`text` or
    LLaMA-Factory v1's `value`), `reasoning` parts and `tool_call` parts; media have no place
    in a reply."""
    text, reasoning, calls = [], [], []
    for j, p in enumerate(parts):
        kind = p.get("type", "text") if isinstance(p, dict) else None
        if kind not in ("text", "reasoning", "tool_call"):
            raise RecordError("bad_field_type", f"field '{field}[{j}]' is not a text, reasoning or tool_call "
                              "part; an assistant turn may hold only those", field=f"{field}[{j}]")
        value = p.get("text", p.get("value"))
        if kind == "tool_call":
            calls += read_calls(value if value is not None else p.get("tool_call"), f"{field}[{j}].value")
            continue
        (text if kind == "text" else reasoning).append(text_of(value, f"{field}[{j}]") if value is not None else "")
    return "".join(text), ("".join(reasoning) or None), calls


def assistant_turn(msg: dict, name: str) -> Turn:
    """An assistant message: text (string or parts), its reasoning (inline, a key or reasoning
    parts) and its loss weight."""
    field = f"{name}.{_keys(msg)[1]}"
    reasoning = None
    for key in REASONING_KEYS:
        if msg.get(key):
            reasoning = text_of(msg[key], f"{name}.{key}")
            break
    value, calls = msg.get(_keys(msg)[1]), []
    if isinstance(value, list):
        value, part_reasoning, calls = _reply_parts(value, field)
        reasoning = reasoning or part_reasoning
    if msg.get("tool_calls"):                                 # OpenAI / TRL
        calls += read_calls(msg["tool_calls"], f"{name}.tool_calls")
    if calls and not (text_of(value, field) if value is not None else "").strip():
        turn = Turn("assistant", [], reasoning=reasoning, read_as="field" if reasoning else "answer-only")
    else:
        turn = reply_turn("" if value is None else value, field, reasoning)
    turn.tool_calls = calls
    turn.loss_weight = loss_weight(msg, name)
    return turn


def tool_result_turn(value, field: str) -> Turn:
    """A tool result: its text (an object or list is written back as JSON)."""
    if value is None:
        raise RecordError("missing_field", f"field '{field}' is missing", field=field)
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):    # text parts
        value = "".join(text_of(p.get("text", p.get("value", "")), f"{field}[{j}]") for j, p in enumerate(value))
    elif isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    return Turn("tool", [Part.of_text(text_of(value, field))])


def join_call_turns(turns: list[Turn], names: list[str]) -> tuple[list[Turn], list[str]]:
    """An assistant turn followed by a turn holding only tool calls (ms-swift, LLaMA-Factory
    write the call as a turn of its own) becomes one turn: its text, then the calls."""
    out, out_names = [], []
    for turn, name in zip(turns, names):
        prev = out[-1] if out else None
        if (prev is not None and prev.role == turn.role == "assistant" and turn.tool_calls
                and not turn.text.strip() and not turn.reasoning and prev.loss_weight == turn.loss_weight):
            prev.tool_calls = prev.tool_calls + turn.tool_calls
            continue
        out.append(turn)
        out_names.append(name)
    return out, out_names


def message_turn(msg, name: str, binder: MediaBinder, content: ContentParser = string_content) -> Turn:
    if not isinstance(msg, dict):
        raise RecordError("bad_field_type", f"field '{name}' must be a message object", field=name)
    role = _role(msg, name)
    if role == "assistant":
        return assistant_turn(msg, name)
    field = f"{name}.{_keys(msg)[1]}"
    if role == "tool":
        return tool_result_turn(msg.get(_keys(msg)[1]), field)
    if role == "call":
        turn = Turn("assistant", [], tool_calls=read_calls(msg.get(_keys(msg)[1]), field))
        turn.loss_weight = loss_weight(msg, name)
        return turn
    if msg.get(_keys(msg)[1]) is None:
        raise RecordError("missing_field", f"field '{field}' is missing", field=field)
    return Turn(role, content(msg[_keys(msg)[1]], field, binder))


def read_turns(messages, key: str, binder: MediaBinder,
               content: ContentParser = string_content) -> tuple[list[Turn], list[str]]:
    """Turns of a message list and each turn's field name (`key[i]`)."""
    if messages is None:
        raise RecordError("missing_field", f"field '{key}' is missing", field=key)
    if not isinstance(messages, list):
        raise RecordError("bad_field_type", f"field '{key}' must be a list of messages", field=key)
    if not messages:
        raise RecordError("missing_field", f"field '{key}' is empty", field=key)
    names = [f"{key}[{i}]" for i in range(len(messages))]
    return join_call_turns([message_turn(m, n, binder, content) for m, n in zip(messages, names)], names)


def reply_of(value, key: str) -> Turn:
    """A DPO reply: a string, one assistant message, or a list holding one assistant message."""
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordError("bad_field_type", f"field '{key}' must hold exactly one assistant "
                              f"message, got {len(value)}", field=key)
        value, key = value[0], f"{key}[0]"
    if isinstance(value, dict):
        if _keys(value)[0] in value and _role(value, key) != "assistant":
            field = f"{key}.{_keys(value)[0]}"
            raise RecordError("bad_role_order", f"{field} must be an assistant reply", field=field)
        return assistant_turn(value, key)
    return reply_turn(value, key)


def read_dialogue(record: dict, origin: Origin, key: str, binder: MediaBinder,
                  content: ContentParser = string_content, implicit: bool = False):
    """A message-list record -> Conversation, or PreferencePair when it carries a rejected reply.

    `implicit=True` (LLaVA, old ms-swift): media with no placeholder at all go before the
    first user text.
    """
    turns, names = read_turns(record.get(key), key, binder, content)
    tools = read_tools(record.get("tools"))
    system = require_text(record, "system", optional=True)
    if system:
        turns, names = [Turn("system", [Part.of_text(system)])] + turns, ["system"] + names
    binder.finish(next((t for t in turns if t.role == "user"), None) if implicit else None)
    meta = {k: record[k] for k in ("id",) if k in record}
    if "chosen" in record or "rejected" in record:           # LLaMA-Factory DPO
        check_roles(turns, prompt=True, names=names)
        return PreferencePair(turns, reply_of(record.get("chosen"), "chosen"),
                              reply_of(record.get("rejected"), "rejected"), origin, meta)
    check_roles(turns, names=names)
    check_calls(turns, tools, names)
    if "rejected_response" in record:                        # ms-swift DPO
        return PreferencePair(turns[:-1], turns[-1], reply_of(record["rejected_response"],
                              "rejected_response"), origin, meta)
    return Conversation(turns, origin, meta, tools=tools)


@register("sharegpt", _is_sharegpt)
def read_sharegpt(record: dict, origin: Origin):
    key = "messages" if "messages" in record else "conversations"
    return read_dialogue(record, origin, key, MediaBinder(record))
