"""The canonical conversation every input format is turned into.

Readers (one per input format, in `readers/`) produce `Conversation` or `PreferencePair`
objects; the renderer (`render.py`) turns them into model samples. Nothing here knows
about tokenizers or image tokens. An assistant turn keeps its reasoning trace apart from
its final answer, so the renderer can write either as QVQ free-form text, think tags
or answer-only, and carries its loss weight (LLaMA-Factory's `loss_weight`, ms-swift's
`loss` / `loss_scale`): 0 means the reply is context only, other values scale its tokens'
loss.

Tools: a conversation may carry the tool list the model was prompted with (`tools`, each
in OpenAI's `{"type": "function", "function": {name, description?, parameters?}}`
wrapping, whatever shape the input gave). A tool call is part of an assistant turn
(`Turn.tool_calls`, after its reasoning and any text), a tool result a turn of its own
(role `tool`, its text in the parts). A turn's order: system? then exchanges of a user turn,
assistant turns and, after each assistant turn that calls tools, the results of those calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant", "tool"]
MediaKind = Literal["image", "video"]


@dataclass(frozen=True)
class Origin:
    """Where a record came from: a file and a 1-based line (JSONL) or 0-based index."""
    source: str
    line: int | None = None
    index: int | None = None

    def where(self) -> str:
        if self.line is not None:
            return f"{self.source}:{self.line}"
        if self.index is not None:
            return f"{self.source}[{self.index}]"
        return self.source

    def to_dict(self) -> dict:
        d: dict = {"source": self.source}
        if self.line is not None:
            d["line"] = self.line
        if self.index is not None:
            d["index"] = self.index
        return d


@dataclass(frozen=True)
class Media:
    """An image or a video as the user referenced it (path, data: URI, URL, or raw bytes).

    A video may be a file or an ordered list of frame images (`frames`).
    """
    kind: MediaKind
    source: str | None = None
    data: bytes | None = None
    frames: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Part:
    kind: Literal["text", "image", "video"]
    text: str = ""
    media: Media | None = None

    @staticmethod
    def of_text(text: str) -> "Part":
        return Part("text", text=text)

    @staticmethod
    def of_media(media: Media) -> "Part":
        return Part(media.kind, media=media)


@dataclass(frozen=True)
class ToolCall:
    """One function call of an assistant turn: the function's name and its parsed JSON arguments."""
    name: str
    arguments: dict

    def to_openai(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Turn:
    role: Role
    parts: list[Part]
    reasoning: str | None = None  # assistant turns: the trace; the parts hold the answer
    loss_weight: float = 1.0      # assistant turns: 0 = no loss on this reply, w = its tokens weigh w
    read_as: str = "answer-only"  # assistant turns: where the reader found the trace (reasoning.READ_AS)
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant turns: calls after the text

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if p.kind == "text")

    @property
    def media(self) -> list[Media]:
        return [p.media for p in self.parts if p.media is not None]


@dataclass
class Conversation:
    turns: list[Turn]
    origin: Origin
    meta: dict = field(default_factory=dict)
    tools: list[dict] = field(default_factory=list)   # {"type": "function", "function": {...}} each

    @property
    def media(self) -> list[Media]:
        return [m for t in self.turns for m in t.media]


@dataclass
class PreferencePair:
    """A DPO record: a shared prompt and two assistant replies."""
    prompt: list[Turn]
    chosen: Turn
    rejected: Turn
    origin: Origin
    meta: dict = field(default_factory=dict)

    @property
    def media(self) -> list[Media]:
        return [m for t in self.prompt for m in t.media]


Example = Conversation | PreferencePair


def read_as(example: Example) -> str:
    """How a record's replies were read (`reasoning.READ_AS`): their one style, or "mixed"."""
    replies = ([t for t in example.turns if t.role == "assistant"] if isinstance(example, Conversation)
               else [example.chosen, example.rejected])
    styles = {t.read_as for t in replies}
    return styles.pop() if len(styles) == 1 else "mixed"
