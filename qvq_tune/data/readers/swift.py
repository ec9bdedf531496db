"""ms-swift's row shapes other than `messages`: `query` / `response` / `history`, and
`conversation` pairs.

SFT  {"system"?, "query": "<img>a.png</img>What is this?", "response": "...",
      "history": [["earlier query", "earlier response"], ...], "images"?: [...]}
     {"system"?, "conversation": [{"human": "<image>q1", "assistant": "r1"},
                                  {"human": "q2", "assistant": "r2"}], "images"?: [...]}
DPO  the query row plus "rejected_response": "..." (`response` is the chosen reply).

History pairs come first, then `query`. A `conversation` pair's user side is `human` or
`user`, its reply `assistant`, `gpt` or `bot` (the role names ms-swift's
MessagesPreprocessor accepts). An inline `<img>path</img>` (Qwen-VL style) becomes an
image part where it stands. Top-level `images` / `videos` bind in order to `<image>` /
`<video>` placeholders; with no placeholder at all they go before the first user text,
as ms-swift's template does. ms-swift 3's `messages` rows are read by `readers/sharegpt.py`.

Detection: a `query` or `conversation` key, and no `conversations` / `messages` (nor
native fields).
"""

from __future__ import annotations

import re

from ..messages import Conversation, Media, Origin, Part, PreferencePair, Turn
from ..quarantine import RecordError
from .base import check_roles, register, require_text, text_of
from .native import is_native, reply_turn
from .sharegpt import MediaBinder, split_around

INLINE = re.compile(r"<img>(.*?)</img>|<(image|video)>", re.S)


USER_KEYS, REPLY_KEYS = ("human", "user"), ("assistant", "gpt", "bot")


def _is_swift(r: dict) -> bool:
    return (("query" in r or "conversation" in r) and "conversations" not in r and "messages" not in r
            and not is_native(r))


def _user(text, field: str, binder: MediaBinder) -> Turn:
    if text is None:
        raise RecordError("missing_field", f"field '{field}' is missing", field=field)
    text = text_of(text, field)

    def make(m: re.Match) -> Part:
        if m.group(1) is not None:
            return Part.of_media(Media("image", source=m.group(1).strip()))
        return Part.of_media(binder.take(m.group(2), field))
    return Turn("user", split_around(text, INLINE, make))


def _history(record: dict, binder: MediaBinder) -> tuple[list[Turn], list[str]]:
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordError("bad_field_type", "field 'history' must be a list of [query, response] pairs",
                          field="history")
    turns, names = [], []
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RecordError("bad_field_type", f"field 'history[{i}]' must be a [query, response] pair",
                              field=f"history[{i}]")
        turns += [_user(pair[0], f"history[{i}][0]", binder), reply_turn(pair[1], f"history[{i}][1]")]
        names += [f"history[{i}][0]", f"history[{i}][1]"]
    return turns, names


def _conversation(record: dict, binder: MediaBinder) -> tuple[list[Turn], list[str]]:
    pairs = record["conversation"]
    if not isinstance(pairs, list) or not pairs:
        raise RecordError("bad_field_type", "field 'conversation' must be a non-empty list of "
                          '{"human": ..., "assistant": ...} pairs', field="conversation")
    turns, names = [], []
    for i, pair in enumerate(pairs):
        name = f"conversation[{i}]"
        if not isinstance(pair, dict):
            raise RecordError("bad_field_type", f"field '{name}' must be a {{\"human\", \"assistant\"}} object",
                              field=name)
        user = next((k for k in USER_KEYS if k in pair), "human")
        reply = next((k for k in REPLY_KEYS if k in pair), "assistant")
        turns += [_user(pair.get(user), f"{name}.{user}", binder),
                  reply_turn(pair.get(reply), f"{name}.{reply}")]
        names += [f"{name}.{user}", f"{name}.{reply}"]
    return turns, names


@register("swift", _is_swift)
def read_swift(record: dict, origin: Origin):
    binder = MediaBinder(record)
    system = require_text(record, "system", optional=True)
    turns, names = ([Turn("system", [Part.of_text(system)])], ["system"]) if system else ([], [])
    if "query" not in record:
        pairs, pair_names = _conversation(record, binder)
        binder.finish(next(t for t in pairs if t.role == "user"))
        check_roles(turns + pairs, names=names + pair_names)
        return Conversation(turns + pairs, origin, {k: record[k] for k in ("id",) if k in record})
    history, history_names = _history(record, binder)
    prompt = turns + history + [_user(record.get("query"), "query", binder)]
    names += history_names + ["query"]
    binder.finish(next(t for t in prompt if t.role == "user"))
    check_roles(prompt, prompt=True, names=names)
    chosen = reply_turn(record.get("response"), "response")
    meta = {k: record[k] for k in ("id",) if k in record}
    if "rejected_response" in record:
        return PreferencePair(prompt, chosen, reply_turn(record["rejected_response"], "rejected_response"),
                              origin, meta)
    check_roles(prompt + [chosen], names=names + ["response"])
    return Conversation(prompt + [chosen], origin, meta)
