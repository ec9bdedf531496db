"""OpenAI-style / Qwen-style / TRL / LLaMA-Factory v1 message records whose content may be
a list of parts.

SFT  {"messages": [{"role": "user", "content": [
         {"type": "image", "image": "a.png" | "https://..." | "data:image/png;base64,..."},
         {"type": "image_url", "image_url": {"url": ...}} (or "image_url": "..."),
         {"type": "video", "video": "clip.mp4" | ["f1.png", "f2.png"]},
         {"type": "text", "text": "What is shown?"}]},
      {"role": "assistant", "content": "...", "reasoning_content"?: "..."}]}
     TRL prompt-completion: {"prompt": [...messages] | "text", "completion": [assistant] | "text"}
     LLaMA-Factory v1: the part's payload under `value` ({"type": "text" | "image_url" |
         "video_url" | "reasoning", "value": ...}) and a `loss_weight` per message.
DPO  TRL: {"prompt": [...] | "text", "chosen": [assistant] | "text", "rejected": ...};
     {"chosen_messages": [...], "rejected_messages": [...]} (LLaMA-Factory v1) or TRL's implicit-prompt
     {"chosen": [...full conversation], "rejected": [...]}: the turns before the last are
     the shared prompt and must be equal.

A part without a type is typed by its key (Qwen's `{"image": ...}`, `{"text": ...}`). An
image or video part with no value (TRL vision data, `{"type": "image"}`) binds, in order,
to the record's top-level `images` / `videos`, as do `<image>` placeholders in text.
`data:` URIs and URLs are kept as `Media.source` for the media stage to decode or refuse;
a `file://` prefix is dropped.

Detection: `messages` with at least one list-of-parts content (string-only `messages` with
`<image>` placeholders are ms-swift / LLaMA-Factory rows, read by `readers/sharegpt.py`);
or `prompt` with `completion` or `chosen` + `rejected`; or `chosen_messages` +
`rejected_messages`; or `chosen` + `rejected`; never with `conversations`, `conversation`, `query`
or native fields.
"""

from __future__ import annotations

from ..messages import Conversation, Media, Origin, Part, PreferencePair, Turn
from ..quarantine import RecordError
from .base import check_roles, register, text_of
from .native import is_native, media_source
from .sharegpt import MediaBinder, has_list_content, read_dialogue, read_turns, reply_of
from .tools import check_calls, read_tools

PART_KEYS = ("text", "image", "image_url", "video", "video_url")


def _is_messages(r: dict) -> bool:
    if is_native(r) or "conversations" in r or "conversation" in r or "query" in r:
        return False
    if "messages" in r:
        return has_list_content(r["messages"])
    if "prompt" in r:
        return "completion" in r or ("chosen" in r and "rejected" in r)
    return ("chosen_messages" in r and "rejected_messages" in r) or ("chosen" in r and "rejected" in r)


def _source(value, field: str, kind: str) -> Media:
    if isinstance(value, str):
        return Media(kind, source=value[len("file://"):] if value.startswith("file://") else value)
    if isinstance(value, list) and kind == "video":
        if not value or not all(isinstance(v, str) for v in value):
            raise RecordError("bad_field_type", f"field '{field}' must be a video path or a list of "
                              "frame paths", field=field)
        return Media("video", frames=tuple(value))
    return Media(kind, **media_source(value, field))


def _part(item, field: str, binder: MediaBinder) -> list[Part]:
    if isinstance(item, str):
        return binder.split(item, field)
    if not isinstance(item, dict):
        raise RecordError("bad_field_type", f"field '{field}' must be a content part object", field=field)
    kind = item.get("type") or next((k for k in PART_KEYS if k in item), None)
    key = kind if kind in item or "value" not in item else "value"     # LLaMA-Factory v1: "value"
    if kind == "text":
        text = item.get(key)
        if text is None:
            raise RecordError("bad_field_type", f"field '{field}.{key}' must be text", field=f"{field}.{key}")
        return binder.split(text_of(text, f"{field}.{key}"), f"{field}.{key}")
    if kind not in ("image", "image_url", "video", "video_url"):
        raise RecordError("bad_field_type", f"field '{field}.type' is {kind!r}; expected text, "
                          "image, image_url, video or video_url", field=f"{field}.type")
    media_kind = kind.split("_")[0]
    value = item.get(key)
    if isinstance(value, dict) and kind.endswith("_url"):
        value = value.get("url")
    if value is None:
        return [Part.of_media(binder.take(media_kind, field))]
    return [Part.of_media(_source(value, f"{field}.{key}", media_kind))]


def content_parts(value, field: str, binder: MediaBinder) -> list[Part]:
    """A string (placeholders bind to top-level media) or a list of typed parts."""
    if isinstance(value, list):
        return [p for j, item in enumerate(value) for p in _part(item, f"{field}[{j}]", binder)]
    if value is None or isinstance(value, dict):
        raise RecordError("bad_field_type", f"field '{field}' must be text or a list of parts", field=field)
    return binder.split(text_of(value, field), field)


def _prompt(value, binder: MediaBinder) -> tuple[list[Turn], list[str]]:
    if isinstance(value, str):
        return [Turn("user", binder.split(value, "prompt"))], ["prompt"]
    return read_turns(value, "prompt", binder, content_parts)


def _full_pair(record: dict, origin: Origin, chosen_key: str, rejected_key: str) -> PreferencePair:
    """Two whole conversations that differ only in their last (assistant) turn."""
    sides = []
    for key in (chosen_key, rejected_key):
        binder = MediaBinder(record)
        turns, names = read_turns(record.get(key), key, binder, content_parts)
        binder.finish()
        check_roles(turns, names=names)
        sides.append(turns)
    (chosen, rejected) = sides
    if chosen[:-1] != rejected[:-1]:
        raise RecordError("bad_field_type", f"'{chosen_key}' and '{rejected_key}' must share every turn "
                          "but the last", field=rejected_key)
    return PreferencePair(chosen[:-1], chosen[-1], rejected[-1], origin, _meta(record))


def _meta(record: dict) -> dict:
    return {k: record[k] for k in ("id",) if k in record}


@register("messages", _is_messages)
def read_messages(record: dict, origin: Origin):
    binder = MediaBinder(record)
    if "messages" in record:
        return read_dialogue(record, origin, "messages", binder, content_parts)
    if "chosen_messages" in record:
        return _full_pair(record, origin, "chosen_messages", "rejected_messages")
    if "prompt" not in record:
        return _full_pair(record, origin, "chosen", "rejected")
    prompt, names = _prompt(record["prompt"], binder)
    binder.finish()
    if "completion" in record:
        completion = record["completion"]
        if isinstance(completion, list) and len(completion) > 1:   # a reply with tool calls and results
            more, more_names = read_turns(completion, "completion", binder, content_parts)
        else:
            more, more_names = [reply_of(completion, "completion")], ["completion"]
        turns, names = prompt + more, names + more_names
        tools = read_tools(record.get("tools"))
        check_roles(turns, names=names)
        check_calls(turns, tools, names)
        return Conversation(turns, origin, _meta(record), tools=tools)
    check_roles(prompt, prompt=True, names=names)
    return PreferencePair(prompt, reply_of(record.get("chosen"), "chosen"),
                          reply_of(record.get("rejected"), "rejected"), origin, _meta(record))
