"""Tool calls in generated text: parse, check against the tool list, and reward valid ones.

Pure text functions (like `answers.py` and `diagnostics.py`), used by the evaluator's
tool loop (`eval/tools.py`), `eval score` on multi-turn transcripts, and GRPO rewards.
A call is written the way Qwen's templates write it: the family's tool-call markers
(`ModelFamily.tool_call_tokens`) around `{"name": ..., "arguments": {...}}`.

Each call found gets three checks, each implying the one before: it `parses` (JSON with a
name and an arguments object), it is `known` (names a listed tool), it is `valid` (its
arguments pass the tool's JSON Schema: required ones present, none unknown when the
schema lists its properties, each of the declared JSON type).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..models.registry import TOOL_CALL_TOKENS
from .readers.tools import PYTHON_TYPES, parameters_schema

_PY_BASE = re.compile(r"^\s*([A-Za-z]+)")


@dataclass(frozen=True)
class FoundCall:
    raw: str                       # the text between the markers
    name: str | None = None
    arguments: dict | None = None
    error: str | None = None       # why it does not parse

    @property
    def parses(self) -> bool:
        return self.error is None


def find_calls(text: str, markers: tuple[str, str] = TOOL_CALL_TOKENS) -> list[FoundCall]:
    """Every call in a reply, in order; an opening marker never closed counts as a call to its end."""
    open_, close = markers
    calls, pos = [], 0
    while (start := text.find(open_, pos)) >= 0:
        end = text.find(close, start + len(open_))
        raw = text[start + len(open_):end if end >= 0 else len(text)]
        calls.append(parse_call(raw))
        pos = len(text) if end < 0 else end + len(close)
    return calls


def parse_call(raw: str) -> FoundCall:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return FoundCall(raw.strip(), error=f"not JSON ({exc.msg})")
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return FoundCall(raw.strip(), error='not {"name": ..., "arguments": {...}}')
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return FoundCall(raw.strip(), obj["name"], error="arguments are not JSON")
    if not isinstance(args, dict):
        return FoundCall(raw.strip(), obj["name"], error="arguments are not an object")
    return FoundCall(raw.strip(), obj["name"], args)


def _json_type_ok(value, declared) -> bool:
    if declared is None:
        return True
    if isinstance(declared, list):
        return any(_json_type_ok(value, d) for d in declared)
    m = _PY_BASE.match(str(declared))
    base = m.group(1).lower() if m else ""
    kind = PYTHON_TYPES.get(base, base)
    checks = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
              "null": lambda v: v is None}
    return checks.get(kind, lambda v: True)(value)


def schema_problem(arguments: dict, function: dict) -> str | None:
    """Why `arguments` do not pass a tool function's parameters schema, or None."""
    schema = parameters_schema(function)
    props = schema.get("properties")
    missing = [r for r in schema.get("required", []) if r not in arguments]
    if missing:
        return f"missing required argument {missing[0]!r}"
    if isinstance(props, dict):
        unknown = [a for a in arguments if a not in props]
        if unknown:
            return f"unknown argument {unknown[0]!r}"
        for name, value in arguments.items():
            if isinstance(props[name], dict) and not _json_type_ok(value, props[name].get("type")):
                return f"argument {name!r} is not of type {props[name].get('type')!r}"
    return None


def check_call(call: FoundCall, tools: list[dict] | None) -> dict:
    """{parses, known, valid, problem} of one call against a tool list (OpenAI-wrapped or bare)."""
    if not call.parses:
        return {"name": call.name, "parses": False, "known": False, "valid": False, "problem": call.error}
    functions = {f["name"]: f for f in (t.get("function", t) for t in tools or [])}
    if call.name not in functions:
        return {"name": call.name, "parses": True, "known": False, "valid": False,
                "problem": f"no tool named {call.name!r}"}
    problem = schema_problem(call.arguments, functions[call.name])
    return {"name": call.name, "parses": True, "known": True, "valid": problem is None, "problem": problem}


def tool_call_diagnostics(replies: list[str], tools: list[dict] | None,
                          markers: tuple[str, str] = TOOL_CALL_TOKENS) -> dict:
    """Counts over a transcript's assistant replies: calls, how many parse / name a known tool /
    pass its schema, and the turns used (replies generated)."""
    checked = [check_call(c, tools) for r in replies for c in find_calls(r, markers)]
    return {"turns": len(replies), "calls": len(checked),
            "parsed": sum(c["parses"] for c in checked), "known": sum(c["known"] for c in checked),
            "valid": sum(c["valid"] for c in checked),
            "problems": [c["problem"] for c in checked if c["problem"]][:5]}


def valid_tool_call_reward(completions: list[str], tools: list | None = None, *,
                           markers: tuple[str, str] = TOOL_CALL_TOKENS, **_) -> list[float]:
    """Reward per completion: the share of its tool calls that pass the schema (1.0 when all do,
    0.0 when none does); None (ignored by TRL) for a completion that calls no tool. `tools` is
    one tool list (of tool objects) for all completions, or one per completion (a dataset
    column: each a list of tools or its JSON text)."""
    per_completion = bool(tools) and not isinstance(tools[0], dict)
    out: list[float | None] = []
    for i, text in enumerate(completions):
        if isinstance(text, list):                          # conversational: the last message's text
            text = text[-1].get("content", "") if text else ""
        these = tools[i] if per_completion else tools
        if isinstance(these, str):
            these = json.loads(these)
        calls = find_calls(text, markers)
        out.append(sum(check_call(c, these)["valid"] for c in calls) / len(calls) if calls else None)
    return out
