"""Bad records: the closed set of reason codes, the error readers raise, and the writer
(`QuarantineWriter`, used by the build and the merge).

Every input record ends either as a sample or as one row of `quarantine.jsonl`:
`{"source", "line" | "index", "record_index", "reason", "message", "field"?, "content_key"?,
"read_as"?, "record"}` where `record_index` is its position in the whole input, `record` the
original record (or an excerpt of it when it is large or not JSON), `content_key` (duplicates
only) the hash the first copy was kept under, and `read_as` (records that parsed, failed a
check and are not duplicates) how their replies' reasoning was read (`reasoning.READ_AS`, or
"mixed").
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .messages import Origin

REASONS: dict[str, str] = {
    "malformed_json": "the line or file is not valid JSON",
    "unknown_schema": "the record matches no known input format",
    "missing_field": "a required field (question, answer, messages...) is absent",
    "bad_field_type": "a field has the wrong type (e.g. a number where text is expected)",
    "missing_media": "an image or video file does not exist",
    "empty_file": "an image or video file has zero bytes",
    "corrupt_media": "an image or video cannot be decoded",
    "pixel_limit": "an image is larger than the pixel limit (decompression-bomb guard)",
    "path_escape": "a media path leaves the image root (.., absolute path, symlink out)",
    "remote_url": "a media URL is remote and --allow-remote was not given",
    "placeholder_mismatch": "the number of <image>/<video> placeholders differs from the media given",
    "empty_assistant": "there is no assistant reply, or it is empty",
    "bad_role_order": "turns are not system? (user assistant (tool assistant)*)+ in order",
    "think_marker_in_answer": "a reply gives its reasoning apart and still has think markers in its answer text",
    "special_token_in_text": "text contains one of the chat template's control tokens (turn, vision or padding markers)",
    # tool-calling records (data/readers/tools.py)
    "bad_tool_schema": "the record's tool list is not JSON, or a tool is not a name with a JSON Schema for its parameters",
    "tool_call_not_json": "a tool call is not JSON, or not a name with an object of arguments",
    "unknown_tool": "a tool call names a function the record's tool list lacks",
    "missing_tool_argument": "a tool call lacks an argument its tool requires",
    "orphan_tool_result": "a tool result has no tool call before it",
    "too_long": "the rendered sample is longer than --max-tokens",
    "duplicate": "an exact duplicate of an earlier record",
    # --filter checks on the replies (data/trace_filters.py), off unless asked for
    "reasoning_loop": "--filter loops: the reply repeats itself (a reasoning loop)",
    "language_mix": "--filter language-mix: the reply switches to another script mid-way",
    "no_answer": "--filter no-answer: the reply never reaches a final answer",
    "trace_too_long": "--filter too-long: the reasoning trace is longer than --max-trace-tokens",
    # `data pairs`: a prompt whose sampled replies give no preference pair (eval/pairing.py)
    "all_right": "data pairs: every sampled reply is right and clean, nothing to reject",
    "all_wrong": "data pairs: no sampled reply is right, nothing to choose",
    "all_defective": "data pairs: every right sampled reply is defective, nothing clean to choose",
}

EXCERPT_CHARS = 2000


class RecordError(ValueError):
    """A record that cannot be used. `code` is one of `REASONS`."""

    def __init__(self, code: str, message: str, field: str | None = None):
        if code not in REASONS:
            raise ValueError(f"unknown quarantine reason {code!r}")
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def excerpt(record) -> object:
    """The record itself when small and JSON-serialisable, else a truncated string."""
    try:
        text = json.dumps(record, ensure_ascii=False, default=_bytes_note)
    except (TypeError, ValueError):
        text = repr(record)
        return text[:EXCERPT_CHARS]
    if len(text) <= EXCERPT_CHARS:
        return json.loads(text)
    return text[:EXCERPT_CHARS] + "...(truncated)"


def _bytes_note(obj):
    if isinstance(obj, (bytes, bytearray)):
        return f"<{len(obj)} bytes>"
    return repr(obj)


def quarantine_row(origin: Origin, code: str, message: str, record, field: str | None = None, *,
                   record_index: int | None = None, content_key: str | None = None,
                   read_as: str | None = None) -> dict:
    row = {**origin.to_dict(), "record_index": record_index, "reason": code, "message": message}
    if field:
        row["field"] = field
    if content_key:
        row["content_key"] = content_key
    if read_as:
        row["read_as"] = read_as
    row["record"] = excerpt(record)
    return row


class QuarantineWriter:
    """Writes `quarantine.jsonl` one row at a time (the build's and the merge's), counting reasons."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = open(self.path, "w", encoding="utf-8")
        self.counts: Counter = Counter()

    def write(self, row: dict) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.counts[row["reason"]] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
