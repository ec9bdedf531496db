"""Tool lists, tool calls and their checks, shared by every reader of tool-calling data.

A record's tool list (`tools`) is a JSON string or a list; each tool is OpenAI's
`{"type": "function", "function": {"name", "description"?, "parameters"?}}` or the bare
function object (LLaMA-Factory's glaive data), and is kept in the wrapped form. A tool call
is `{"name", "arguments"}` (arguments an object or a JSON string of one), OpenAI's
`{"type": "function", "function": {...}, "id"?}`, or a JSON string of either (or of a list
of them: LLaMA-Factory writes parallel calls as one `function_call` list).

Checks (each its own quarantine reason, the field named):
- `bad_tool_schema`: a tool without a name, or whose `parameters` is not a JSON Schema
  object (its `type` not "object", `properties` not an object of schemas, a property type
  that is not a JSON Schema type, `required` not a list of its properties' names).
  Type names the way xLAM / APIGen data spells them, which LLaMA-Factory's
  `reason_tool_use_demo_50.jsonl` carries (`str`, `int, optional`, `List[str]`, `dict`,
  and `parameters` given as the bare property map with `required` beside it), are read
  as those JSON Schema types for the check; the list is rendered as given.
- `tool_call_not_json`: a call that is not JSON, or not a name with an arguments object.
- `unknown_tool`: a call naming a function the record's tool list lacks.
- `missing_tool_argument`: a call without an argument its tool requires.
- `orphan_tool_result` (in `base.check_roles`): a tool result with no call before it.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

from ..messages import ToolCall, Turn
from ..quarantine import RecordError

JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
# xLAM / APIGen type names (Python's) -> the JSON Schema type they mean.
PYTHON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                "dict": "object", "list": "array", "tuple": "array", "set": "array",
                "none": "null", "any": None}
_PY_TYPE = re.compile(r"^\s*(?P<base>[A-Za-z]+)(\[.*\])?\s*(,\s*optional)?\s*$")


def tool_error(code: str, message: str, field: str) -> RecordError:
    return RecordError(code, message, field=field)


def json_type(value) -> bool:
    """Whether a schema `type` names JSON Schema types (or xLAM's Python names for them)."""
    if isinstance(value, list):
        return bool(value) and all(json_type(v) for v in value)
    if not isinstance(value, str):
        return False
    if value in JSON_TYPES:
        return True
    m = _PY_TYPE.match(value)
    return bool(m) and m.group("base").lower() in {*PYTHON_TYPES, *JSON_TYPES, "optional", "union"}


def _check_schema(schema, field: str) -> None:
    if not isinstance(schema, dict):
        raise tool_error("bad_tool_schema", f"field '{field}' must be a JSON Schema object", field)
    if "type" in schema and not json_type(schema["type"]):
        raise tool_error("bad_tool_schema", f"field '{field}.type' is {schema['type']!r}, not a JSON "
                         f"Schema type ({', '.join(JSON_TYPES)})", f"{field}.type")
    for key in ("properties", "$defs", "definitions"):
        if key in schema:
            if not isinstance(schema[key], dict):
                raise tool_error("bad_tool_schema", f"field '{field}.{key}' must be an object", f"{field}.{key}")
            for name, sub in schema[key].items():
                _check_schema(sub, f"{field}.{key}.{name}")
    if isinstance(schema.get("items"), dict):
        _check_schema(schema["items"], f"{field}.items")
    if "required" in schema and (not isinstance(schema["required"], list)
                                 or not all(isinstance(r, str) for r in schema["required"])):
        raise tool_error("bad_tool_schema", f"field '{field}.required' must be a list of property names",
                         f"{field}.required")


def parameters_schema(function: dict) -> dict:
    """A function's parameters as a JSON Schema object (xLAM's bare property map and its
    function-level `required` read as one)."""
    params = function.get("parameters") or {}
    if isinstance(params, dict) and not {"type", "properties"} & set(params) and params and \
            all(isinstance(v, dict) for v in params.values()):
        params = {"type": "object", "properties": params}
    if "required" in function and "required" not in params:
        params = {**params, "required": function["required"]}
    return params


def _check_tool(tool, field: str) -> dict:
    if not isinstance(tool, dict):
        raise tool_error("bad_tool_schema", f"field '{field}' must be a tool object", field)
    function, where = (tool["function"], f"{field}.function") if "function" in tool else (tool, field)
    if not isinstance(function, dict):
        raise tool_error("bad_tool_schema", f"field '{where}' must be a function object", where)
    if not isinstance(function.get("name"), str) or not function["name"].strip():
        raise tool_error("bad_tool_schema", f"field '{where}.name' must be the function's name", f"{where}.name")
    params = parameters_schema(function)
    _check_schema(params, f"{where}.parameters")
    if params.get("type", "object") not in ("object", "dict"):
        raise tool_error("bad_tool_schema", f"field '{where}.parameters.type' must be \"object\"",
                         f"{where}.parameters.type")
    unknown = [r for r in params.get("required", []) if r not in params.get("properties", {})]
    if unknown and "properties" in params:
        raise tool_error("bad_tool_schema", f"field '{where}.parameters.required' names {unknown[0]!r}, "
                         "which is not among its properties", f"{where}.parameters.required")
    return tool if "function" in tool else {"type": "function", "function": tool}


def _decoded(value, field: str, code: str):
    """A JSON string's value (other values as they are); `code` when it is not JSON."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise tool_error(code, f"field '{field}' is not valid JSON ({exc.msg})", field) from None


def read_tools(value, field: str = "tools") -> list[dict]:
    """A record's tool list (a JSON string or a list; absent, "" or "[]" is none), each tool
    checked and wrapped as OpenAI does."""
    if value is None or value == "":
        return []
    value = _decoded(value, field, "bad_tool_schema")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise tool_error("bad_tool_schema", f"field '{field}' must be a list of tools", field)
    return [_check_tool(t, f"{field}[{i}]") for i, t in enumerate(value)]


def _one_call(call, field: str) -> ToolCall:
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call, field = call["function"], f"{field}.function"
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        raise tool_error("tool_call_not_json", f"field '{field}' must be a tool call "
                         '{"name": ..., "arguments": {...}}', field)
    args = call.get("arguments", call.get("parameters", {}))
    args = {} if isinstance(args, str) and not args.strip() else _decoded(args, f"{field}.arguments",
                                                                        "tool_call_not_json")
    if not isinstance(args, dict):
        raise tool_error("tool_call_not_json", f"field '{field}.arguments' must be a JSON object",
                         f"{field}.arguments")
    return ToolCall(call["name"], args)


def read_calls(value, field: str) -> list[ToolCall]:
    """One call or a list of calls, as objects or a JSON string."""
    value = _decoded(value, field, "tool_call_not_json")
    if isinstance(value, list):
        if not value:
            raise tool_error("tool_call_not_json", f"field '{field}' is an empty list of calls", field)
        return [_one_call(c, f"{field}[{i}]") for i, c in enumerate(value)]
    return [_one_call(value, field)]


def check_calls(turns: Sequence[Turn], tools: list[dict], names: Sequence[str] | None = None) -> None:
    """Every call names a listed tool and gives the arguments that tool requires."""
    functions = {t["function"]["name"]: t["function"] for t in tools}
    for i, turn in enumerate(turns):
        for j, call in enumerate(turn.tool_calls):
            where = f"{names[i] if names else f'turn {i}'}.tool_calls[{j}]"
            if call.name not in functions:
                listed = ", ".join(sorted(functions)[:8]) or "none"
                raise tool_error("unknown_tool", f"{where} calls {call.name!r}, which the record's tools do "
                                 f"not list (listed: {listed})", where)
            missing = [r for r in parameters_schema(functions[call.name]).get("required", [])
                       if r not in call.arguments]
            if missing:
                raise tool_error("missing_tool_argument", f"{where} calls {call.name!r} without its required "
                                 f"argument {missing[0]!r}", where)
