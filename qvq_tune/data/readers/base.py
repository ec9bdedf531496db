"""Reader dispatch: options, column mapping, field aliases, format detection, and shared checks.

Auto-detection asks each registered reader's `detect`; the rules are disjoint, so the
order readers register in does not matter (a test checks that no two ever match). Native
fields win: the others only claim records that are not native.

| reader   | a record is this format when it has...                                        |
|----------|-------------------------------------------------------------------------------|
| native   | `question` and `answer`, or `question` with `chosen` + `rejected`              |
| llava    | a `conversations` key and a singular `image` / `video` key                    |
| sharegpt | a `conversations` key without singular `image`/`video`, or a `messages` key    |
|          | with no list-of-parts content (string content, `<image>` + top-level `images`) |
| messages | a `messages` list with at least one list-of-parts content (OpenAI / Qwen /     |
|          | LLaMA-Factory v1); or TRL `prompt` + `completion` / `chosen` + `rejected`; or  |
|          | `chosen_messages` + `rejected_messages`; or TRL implicit-prompt `chosen` +     |
|          | `rejected` lists                                                               |
| swift    | `query` or `conversation` without `conversations` / `messages` (ms-swift rows)  |

Column mapping (`--columns messages=dialog`) renames fields before detection, so it
works with every format. Then `field_aliases` fills in the native fields that reasoning
and RL datasets name differently (`problem`, `ground_truth`, `solution`, `image_path`;
see `ALIASES`); the mapping it applied is recorded in the example's `meta["aliases"]`
and counted in the build report.

Where text is expected, a number or a boolean is text (`"ground_truth": 4` is "4",
`true` is "true", as JSON spells them): counting and math sets store answers as numbers.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..messages import Example, Origin, Turn
from ..quarantine import RecordError

FORMATS = ("auto", "native", "sharegpt", "llava", "messages", "swift", "hf")
REASONING_KEYS = ("reasoning", "reasoning_content", "thinking")

# Native field <- the names reasoning / RL datasets give it (R1-V and open-r1-multimodal:
# problem / solution; verl and MM-Eureka style: ground_truth; local image sets: image_path).
# An alias fills a native field only when the record lacks it. `solution` is the answer
# when the record has no other answer field, else (a worked solution beside the final
# answer, as MATH-style sets have) the reasoning trace.
ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("problem",),
    "answer": ("ground_truth", "solution"),
    "images": ("image_path", "image_paths"),
}
# Records with a message list (or another reader's key) are never aliased.
_MESSAGE_KEYS = ("messages", "conversations", "conversation", "query", "prompt", "chosen_messages")


@dataclass
class ReaderOptions:
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)   # canonical name -> user's field

    def __post_init__(self):
        if self.format not in FORMATS:
            from ...errors import UserError
            raise UserError(f"unknown --format {self.format!r}; choose from {', '.join(FORMATS)}",
                            key="format")


Reader = Callable[[dict, Origin], Example]
_READERS: dict[str, tuple[Callable[[dict], bool], Reader]] = {}


def register(name: str, detect: Callable[[dict], bool]):
    """Register a reader; `detect` says whether a raw record looks like this format."""
    def deco(fn: Reader) -> Reader:
        _READERS[name] = (detect, fn)
        return fn
    return deco


def apply_columns(record: dict, columns: dict[str, str]) -> dict:
    """Rename the user's fields to canonical names (`--columns question=problem,...`)."""
    if not columns:
        return record
    out = dict(record)
    for canonical, theirs in columns.items():
        if theirs in record:
            out[canonical] = out.pop(theirs) if theirs != canonical else record[theirs]
    return out


def field_aliases(record: dict) -> dict[str, str]:
    """The native fields a question/answer record spells with reasoning-dataset names:
    {canonical: the record's field}, {} when none applies (see `ALIASES`)."""
    if any(k in record for k in _MESSAGE_KEYS) or not any(k in record for k in ("question", *ALIASES["question"])):
        return {}
    mapping = {}
    for canonical, names in ALIASES.items():
        present = canonical in record or (canonical == "images" and "image" in record)
        theirs = next((n for n in names if n in record), None)
        if not present and theirs:
            mapping[canonical] = theirs
    answer = mapping.get("answer", "answer" if "answer" in record else None)
    if answer not in (None, "solution") and "solution" in record and not any(k in record for k in REASONING_KEYS):
        mapping["reasoning"] = "solution"
    return mapping


def parse_columns(text: str) -> dict[str, str]:
    """`question=problem,answer=solution` -> {"question": "problem", "answer": "solution"}."""
    from ...errors import UserError
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        canonical, sep, theirs = item.partition("=")
        if not sep or not canonical.strip() or not theirs.strip():
            raise UserError(f"--columns item {item!r} is not CANONICAL=YOURS", key="columns")
        out[canonical.strip()] = theirs.strip()
    return out


def detect_format(record: dict) -> str | None:
    for name, (detect, _) in _READERS.items():
        if detect(record):
            return name
    return None


def parse(record, origin: Origin, options: ReaderOptions) -> Example:
    _load_all()
    if not isinstance(record, dict):
        raise RecordError("unknown_schema", f"expected a JSON object, got {type(record).__name__}")
    record = apply_columns(record, options.columns)
    aliases = field_aliases(record) if options.format in ("auto", "hf", "native") else {}
    record = apply_columns(record, aliases)
    name = options.format if options.format not in ("auto", "hf") else detect_format(record)
    if name is None:
        keys = ", ".join(sorted(map(str, record))[:12])
        raise RecordError("unknown_schema", f"no input format matches the fields [{keys}]; "
                          "pass --format or map your fields with --columns")
    if name not in _READERS:
        raise RecordError("unknown_schema", f"no reader for format {name!r}")
    try:
        example = _READERS[name][1](record, origin)
    except RecordError as exc:
        raise in_their_names(exc, {**options.columns, **aliases}) from None
    if aliases:
        example.meta["aliases"] = aliases
    example.meta["format"] = name          # the build's provenance counts records per format
    return example


def in_their_names(exc: RecordError, mapping: dict[str, str]) -> RecordError:
    """The error naming the record's own field where `mapping` (canonical -> theirs) renamed it."""
    head = re.match(r"[^.\[]+", exc.field or "")
    if head is None or head.group() not in mapping:
        return exc
    field = mapping[head.group()] + exc.field[head.end():]
    return RecordError(exc.code, exc.message.replace(f"'{exc.field}'", f"'{field}'"), field)


def _load_all() -> None:
    import importlib
    for mod in ("native", "sharegpt", "llava", "messages", "swift"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{mod}":
                raise


def text_of(value, field: str) -> str:
    """Text where text is expected: a string, or a number / boolean written as JSON writes it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value)):
        return json.dumps(value)
    raise RecordError("bad_field_type", f"field '{field}' must be text, got {type(value).__name__}",
                      field=field)


def require_text(record: dict, key: str, *, optional: bool = False) -> str | None:
    value = record.get(key)
    if value is None:
        if optional:
            return None
        raise RecordError("missing_field", f"field '{key}' is missing", field=key)
    return text_of(value, key)


def as_list(value, key: str) -> list:
    """A single path where a list is expected is accepted."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise RecordError("bad_field_type", f"field '{key}' must be a path or a list of paths", field=key)


def check_roles(turns: Sequence[Turn], *, prompt: bool = False,
                names: Sequence[str] | None = None) -> None:
    """Turns must read `system? (user assistant (tool+ assistant)*)+`, where tool results follow
    an assistant turn that calls tools (at most one result per call); a DPO prompt
    (`prompt=True`) ends with a user turn (or a tool result).

    Out-of-order roles raise `bad_role_order`, a tool result with no call before it
    `orphan_tool_result`; a conversation with no assistant reply after its last user turn, or
    with a blank reply (no text and no tool call), raises `empty_assistant`. `names` gives each
    turn's source field (e.g. `conversations[3]`) for the error.
    """
    def name(i: int) -> str:
        return names[i] if names else f"turn {i}"

    start = 1 if turns and turns[0].role == "system" else 0
    prev, pending = None, 0          # the previous turn; results still owed to its calls
    for i in range(start, len(turns)):
        role = turns[i].role
        if role == "tool":
            if pending <= 0:
                why = "no tool call before it" if prev is None or prev.role != "tool" else \
                    "more results than the calls before it"
                raise RecordError("orphan_tool_result", f"{name(i)} is a tool result with {why}",
                                  field=name(i))
            pending -= 1
        else:
            expected = "user" if prev is None or (prev.role == "assistant" and not prev.tool_calls) \
                else "assistant"
            if prev is not None and prev.role == "assistant" and prev.tool_calls:
                expected = "tool"
            if role != expected:
                raise RecordError("bad_role_order", f"{name(i)} is a '{role}' turn where a '{expected}' "
                                  "turn was expected; turns must be an optional system turn, then user "
                                  "and assistant alternating (tool results after the assistant turn "
                                  "that calls the tools)", field=name(i))
            pending = len(turns[i].tool_calls)
        prev = turns[i]
    last = len(turns) - 1
    if prompt:
        if last < start or turns[last].role not in ("user", "tool"):
            raise RecordError("bad_role_order", "a preference prompt must end with a user turn",
                              field=name(last) if last >= 0 else None)
        return
    if last < start or turns[last].role != "assistant":
        raise RecordError("empty_assistant", "there is no assistant reply after the last user turn",
                          field=name(last) if last >= 0 else None)
    for i in range(start, len(turns)):
        if turns[i].role == "assistant" and not turns[i].text.strip() and not turns[i].tool_calls:
            raise RecordError("empty_assistant", f"{name(i)} is an empty assistant reply",
                              field=name(i))
