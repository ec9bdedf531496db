"""`eval score`: extraction, scoring and diagnostics for replies generated elsewhere
(e.g. by vLLM serving the exported model), without loading a model.

Each input line: `id`, `reply`, `reference`, and optionally `choices` (a list, or a dict
letter -> text), `reasoning` (the trace when the server returned it apart, as vLLM's
reasoning parser does), `finish_reason` ("length" means the budget was hit),
`num_tokens`, `sample` and `condition` ("real" | "blank"). Token counts come from
`num_tokens`, else from a tokenizer when one is given; the budget from `finish_reason`,
else from `num_tokens >= max_new_tokens` when that is given.

A multi-turn transcript (an agent run with tools) is `messages` instead of `reply`: OpenAI
messages whose assistant turns carry `content`, `reasoning_content` and `tool_calls`, with
`tool` turns for the results (and `tools`, the tool list, for the schema checks). The last
assistant message is the reply scored; every call of every assistant turn is checked
(`data/tool_calls.py`: parses, names a listed tool, passes its schema).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..data.tool_calls import tool_call_diagnostics
from ..models.registry import THINK_TOKENS, TOOL_CALL_TOKENS
from .evaluate import write_results
from .scoring import score_reply

REQUIRED = ("id", "reference")
CONDITIONS = ("real", "blank")


def _check(record, line: int, path: str) -> dict:
    def bad(message: str, key: str | None = None):
        return UserError(message, path=path, line=line, key=key)
    if not isinstance(record, dict):
        raise bad("each line must be a JSON object with id, reply and reference")
    for key in REQUIRED:
        if key not in record:
            raise bad(f"missing '{key}'; each line needs id, reply (or messages) and reference", key)
    if "reply" not in record and "messages" not in record:
        raise bad("missing 'reply'; each line needs id, reply (or messages) and reference", "reply")
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs) or \
                not any(m.get("role") == "assistant" for m in msgs):
            raise bad("'messages' must be a list of messages with at least one assistant message", "messages")
    if "tools" in record and not isinstance(record["tools"], (list, str, type(None))):
        raise bad("'tools' must be a list of tools (or its JSON text)", "tools")
    if isinstance(record.get("tools"), str):
        try:
            json.loads(record["tools"])
        except json.JSONDecodeError as exc:
            raise bad(f"'tools' is not valid JSON ({exc.msg})", "tools") from None
    for key in ("reply", "reasoning"):
        if key in record and record[key] is not None and not isinstance(record[key], str):
            raise bad(f"'{key}' must be text", key)
    if not isinstance(record["reference"], (str, int, float)) or isinstance(record["reference"], bool):
        raise bad("'reference' must be text or a number", "reference")
    if "choices" in record and not isinstance(record["choices"], (list, dict, type(None))):
        raise bad("'choices' must be a list of options or an object letter -> option", "choices")
    if record.get("condition", "real") not in CONDITIONS:
        raise bad(f"'condition' must be one of {', '.join(CONDITIONS)}", "condition")
    if "num_tokens" in record and not (isinstance(record["num_tokens"], int) and record["num_tokens"] >= 0):
        raise bad("'num_tokens' must be a non-negative integer", "num_tokens")
    return record


def read_predictions(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError("predictions file does not exist", path=str(path))
    records = []
    with open(path, encoding="utf-8") as fh:
        for n, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"not valid JSON ({exc.msg})", path=str(path), line=n) from None
            records.append(_check(record, n, str(path)))
    if not records:
        raise UserError("no predictions in this file", path=str(path))
    return records


def assistant_text(msg: dict, think=THINK_TOKENS, markers=TOOL_CALL_TOKENS) -> str:
    """An OpenAI assistant message as the model wrote it: its trace, its text, its calls."""
    text = msg.get("content") or ""
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if msg.get("reasoning_content"):
        text = f"{think[0]}{msg['reasoning_content']}{think[1]}{text}"
    for call in msg.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        args = fn.get("arguments", {})
        body = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False) \
            if not isinstance(args, str) else f'{{"name": {json.dumps(fn.get("name"))}, "arguments": {args}}}'
        text += f"\n{markers[0]}\n{body}\n{markers[1]}"
    return text


def transcript_of(record: dict, think=THINK_TOKENS) -> tuple[str, dict]:
    """(the last reply, transcript fields) of a `messages` line."""
    replies, results, transcript = [], [], []
    for m in record["messages"]:
        if m.get("role") == "assistant":
            replies.append(assistant_text(m, think))
            transcript.append({"reply": replies[-1], "results": []})
        elif m.get("role") == "tool" and transcript:
            transcript[-1]["results"].append(m.get("content"))
    tools = record.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    return replies[-1], {"transcript": transcript, "tools": tool_call_diagnostics(replies, tools)}


def score_predictions(path: str | Path, out_dir: str | Path, *, tokenizer=None,
                      max_new_tokens: int | None = None, think: tuple[str, str] = THINK_TOKENS,
                      rel_tol: float = 1e-4) -> dict:
    """Score every line of `path`; write OUT/samples.jsonl, summary.json, report.md."""
    rows = []
    for record in read_predictions(path):
        extra = {}
        if "messages" in record:
            reply, extra = transcript_of(record, think)
        else:
            reply = record["reply"] or ""
        if record.get("reasoning"):
            reply = f"{think[0]}{record['reasoning']}{think[1]}{reply}"
        tokens = record.get("num_tokens")
        if tokens is None and tokenizer is not None:
            tokens = len(tokenizer(reply, add_special_tokens=False)["input_ids"])
        finish = record.get("finish_reason")
        hit = finish == "length" if finish else (tokens >= max_new_tokens if tokens is not None and max_new_tokens
                                                 else None)
        row = {"id": str(record["id"]), "sample": record.get("sample", 0),
               "condition": record.get("condition", "real")}
        row.update(score_reply(reply, str(record["reference"]), choices=record.get("choices"), num_tokens=tokens,
                               hit_budget=hit, think=think, rel_tol=rel_tol))
        row.update(extra)
        rows.append(row)
    settings = {"predictions": str(Path(path).resolve()), "max_new_tokens": max_new_tokens,
                "tokenizer": getattr(tokenizer, "name_or_path", None)}
    return write_results(out_dir, rows, settings, f"Scored predictions: {Path(path).name}")
