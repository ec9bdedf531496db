"""Messages -> samples: the one place that knows Qwen's image tokens, chat template and labels.

`SampleRenderer` renders a `Conversation` with the model's own processor and chat
template (`processor.apply_chat_template`), tokenises it once with character offsets,
puts loss only on assistant replies (reasoning, answer and the end-of-turn token), and
expands each image/video placeholder to the number of vision tokens the processor
computes for that media. Pixels are not produced here: samples keep media references
and the collator turns them into pixels (see `data/collate.py`).

Per token, a sample also records which part of a reply it belongs to (`label_span`:
0 not labelled, 1 reasoning trace, 2 answer and end-of-turn token, 3 tool call) and, when any reply
carries a loss weight other than 1, its weight (`loss_weights`; None otherwise: every
labelled token weighs 1). A reply of weight 0 is not labelled at all.

Tools: a conversation's tool list goes to the template as `tools=`; assistant turns carry
their calls (`tool_calls`), tool results are `tool` messages. A family whose own template has
no tool section names the one that has (`ModelFamily.tool_chat_template`), used only for
conversations with tools. The tool list and tool results are never labelled; an assistant
turn's reasoning, text and calls are.

Over `--max-tokens`, `--truncate` never cuts the final answer or the end-of-turn token:
it drops the earliest exchanges (user + assistant) first, then cuts the middle out of
the last reply's reasoning trace (marked by `TRUNCATION_MARK`); a sample that still does
not fit is `too_long`.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
from dataclasses import dataclass, field

from ..models.registry import ModelFamily
from .messages import Conversation, PreferencePair, Turn
from .reasoning import PairCut, ReasoningFormat, answer_offset, cut_pair, format_reply

IGNORE_INDEX = -100
SPAN_NONE, SPAN_REASONING, SPAN_ANSWER, SPAN_TOOL_CALL = 0, 1, 2, 3      # `label_span` values
TRUNCATION_MARK = "\n...\n"                           # stands where a trace's middle was cut


@dataclass(frozen=True)
class ResolvedMedia:
    """A media file made local and measured by the media stage (`data/media.py`)."""
    kind: str                      # "image" | "video"
    path: str                      # local file (image, video) or folder of frames
    grid_thw: tuple[int, int, int]
    num_tokens: int                # vision tokens after the spatial merge
    meta: dict = field(default_factory=dict)   # e.g. video fps / frame count


class RenderError(ValueError):
    """A record that cannot become a sample; `code` is a quarantine reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class RenderOptions:
    reasoning: ReasoningFormat = "qvq"
    system_prompt: str | None = None   # inserted when a record has none; None: template default
    max_tokens: int | None = None
    truncate: bool = False
    pair_cut: PairCut = "none"          # preference pairs: cut at the divergence point / step


class SampleRenderer:
    def __init__(self, processor, family: ModelFamily, options: RenderOptions | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.family = family
        self.options = options or RenderOptions()
        tok = self.tokenizer
        self.image_token_id = tok.convert_tokens_to_ids(family.image_token)
        self.video_token_id = tok.convert_tokens_to_ids(family.video_token)
        self.video_placeholder_ids = tok(family.video_placeholder, add_special_tokens=False)["input_ids"]
        self._specials = family.control_tokens

    # ---- messages in the processor's format -------------------------------------------
    def to_chat(self, turns: list[Turn]) -> list[dict]:
        chat: list[dict] = []
        if self.options.system_prompt is not None and (not turns or turns[0].role != "system"):
            chat.append({"role": "system", "content": self.options.system_prompt})
        for turn in turns:
            if turn.role == "assistant":
                message = {"role": "assistant", "content": self.format_reply(turn)}
                if turn.tool_calls:
                    message["tool_calls"] = [c.to_openai() for c in turn.tool_calls]
                chat.append(message)
            elif turn.role == "tool":
                chat.append({"role": "tool", "content": turn.text})
            elif turn.role == "system":
                chat.append({"role": "system", "content": turn.text})
            else:
                content = []
                for p in turn.parts:
                    if p.kind == "text":
                        if p.text:
                            content.append({"type": "text", "text": p.text})
                    else:
                        content.append({"type": p.kind})
                chat.append({"role": "user", "content": content})
        return chat

    def format_reply(self, turn: Turn) -> str:
        """An assistant turn's text in the chosen reasoning format, with the family's markers."""
        return format_reply(turn.reasoning, turn.text, self.options.reasoning, self.family.think_tokens,
                            final=not turn.tool_calls)

    def chat_text(self, turns: list[Turn], *, add_generation_prompt: bool = False,
                  tools: list[dict] | None = None) -> str:
        extra: dict = {}
        if tools or any(t.role == "tool" or t.tool_calls for t in turns):
            extra["tools"] = tools or None
            if self.family.tool_chat_template:
                extra["chat_template"] = self.family.tool_template_text()
        return self.processor.apply_chat_template(self.to_chat(turns), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **extra)

    # ---- samples ------------------------------------------------------------------------
    def check_text(self, turns: list[Turn]) -> None:
        for i, turn in enumerate(turns):
            calls = json.dumps([[c.name, c.arguments] for c in turn.tool_calls], ensure_ascii=False)
            for text in (turn.text, turn.reasoning or "", calls if turn.tool_calls else ""):
                for s in self._specials:
                    if s in text:
                        raise RenderError("special_token_in_text",
                                          f"turn {i} ({turn.role}) contains the control token {s!r}")

    def render(self, conv: Conversation, media: list[ResolvedMedia]) -> dict:
        """A training sample: input_ids, labels, label spans, loss weights and media references."""
        self.check_text(conv.turns)
        tools = conv.tools
        turns, tokens = conv.turns, self._tokenize(self.chat_text(conv.turns, tools=tools), media, conv.turns)
        limit, truncated = self.options.max_tokens, False
        if limit and len(tokens.ids) > limit:
            if not self.options.truncate:
                raise RenderError("too_long", f"{len(tokens.ids)} tokens > --max-tokens {limit} "
                                  "(reasoning is never cut silently; pass --truncate to cut)")
            turns, media, tokens = self._fit(turns, media, tokens, limit, tools)
            truncated = True
        return self._finish(tokens, media, turns, truncated)

    def render_prompt(self, turns: list[Turn], media: list[ResolvedMedia],
                      tools: list[dict] | None = None) -> dict:
        """A generation prompt (for evaluation): the turns plus the assistant header."""
        self.check_text(turns)
        tokens = self._tokenize(self.chat_text(turns, add_generation_prompt=True, tools=tools), media)
        return {"input_ids": tokens.ids, **self._media_columns(media)}

    def render_pair(self, pair: PreferencePair, media: list[ResolvedMedia]) -> dict:
        """A DPO sample: prompt ids (ending in the assistant header) and the two completions."""
        prompt = self.render_prompt(pair.prompt, media)
        out = {"prompt_input_ids": prompt["input_ids"], **self._media_columns(media)}
        self.check_text([pair.chosen, pair.rejected])
        end = self.family.turn_end
        replies = [self.format_reply(pair.chosen) + end, self.format_reply(pair.rejected) + end]
        shared, replies = cut_pair(*replies, self.options.pair_cut)
        if shared:   # the replies' common start joins the prompt; only what differs is scored
            out["prompt_input_ids"] = out["prompt_input_ids"] + self.tokenizer(shared, add_special_tokens=False)["input_ids"]
        for side, reply in zip(("chosen", "rejected"), replies):
            out[f"{side}_input_ids"] = self.tokenizer(reply, add_special_tokens=False)["input_ids"]
        total = len(out["prompt_input_ids"]) + max(len(out["chosen_input_ids"]), len(out["rejected_input_ids"]))
        if self.options.max_tokens and total > self.options.max_tokens:
            raise RenderError("too_long", f"{total} tokens > --max-tokens {self.options.max_tokens}")
        out["num_tokens"] = total
        out["num_vision_tokens"] = sum(m.num_tokens for m in media)
        return out

    # ---- internals ----------------------------------------------------------------------
    def assistant_spans(self, text: str) -> list[tuple[int, int, int, int]]:
        """(start, answer start, calls start, stop) character offsets of each assistant reply:
        after its header, through the end-of-turn token; the answer starts after the reasoning
        trace, the calls at the first tool-call marker (`stop` when it calls none)."""
        header, end = self.family.assistant_header, self.family.turn_end
        spans, pos = [], 0
        while True:
            h = text.find(header, pos)
            if h < 0:
                return spans
            start = h + len(header)
            e = text.find(end, start)
            stop = len(text) if e < 0 else e + len(end)
            reply = text[start:stop]
            c = reply.find(self.family.tool_call_tokens[0])
            calls = stop if c < 0 else start + c
            answer = start + answer_offset(reply, self.options.reasoning, self.family.think_tokens)
            if c >= 0 and (answer > calls or self.options.reasoning == "qvq"):
                answer = calls       # a calling turn has no answer: its trace, then its calls
            spans.append((start, answer, calls, stop))
            pos = stop

    def _tokenize(self, text: str, media: list[ResolvedMedia], turns: list[Turn] | None = None) -> "_Tokens":
        """Token ids of a rendered chat, vision placeholders expanded; given the `turns` it
        was rendered from, also the labels, label spans and loss weights of their replies."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=turns is not None)
        tokens = _Tokens.unlabelled(enc["input_ids"])
        if turns is not None:
            replies = self.assistant_spans(text)
            weights = [t.loss_weight for t in turns if t.role == "assistant"]
            starts = [s for s, _, _, _ in replies]
            for i, (a, b) in enumerate(enc["offset_mapping"]):
                k = bisect.bisect_right(starts, a) - 1
                if k >= 0 and b <= replies[k][3] and weights[k]:
                    _, answer, calls, _ = replies[k]
                    span = SPAN_REASONING if a < answer else SPAN_ANSWER if a < calls else SPAN_TOOL_CALL
                    tokens.label(i, span, weights[k])
        return self._expand_vision(tokens, media)

    def _fit(self, turns: list[Turn], media: list[ResolvedMedia], tokens: "_Tokens", limit: int,
             tools: list[dict] | None = None):
        """(turns, media, tokens) cut to `limit` tokens: earliest exchanges (a user turn up to the
        next, its tool calls and results with it) dropped first, then the middle of the last
        reasoning trace; the answer and end-of-turn token always stay."""
        first = 1 if turns[0].role == "system" else 0
        while True:
            nxt = next((i for i in range(first + 1, len(turns)) if turns[i].role == "user"), None)
            if nxt is None:
                break
            before = sum(len(t.media) for t in turns[:first])
            dropped = sum(len(t.media) for t in turns[first:nxt])
            turns, media = turns[:first] + turns[nxt:], media[:before] + media[before + dropped:]
            tokens = self._tokenize(self.chat_text(turns, tools=tools), media, turns)
            if len(tokens.ids) <= limit:
                return turns, media, tokens
        turns, tokens = self._cut_trace(turns, media, tokens, limit, tools)
        return turns, media, tokens

    def _cut_trace(self, turns: list[Turn], media: list[ResolvedMedia], tokens: "_Tokens", limit: int,
                   tools: list[dict] | None = None):
        last, reasoning = turns[-1], (turns[-1].reasoning or "")
        why = f"{len(tokens.ids)} tokens > --max-tokens {limit} with one exchange left"
        if self.options.reasoning == "answer-only" or not reasoning.strip():
            raise RenderError("too_long", f"{why} and no reasoning trace to shorten (the answer and "
                              "end-of-turn token are never cut)")
        offsets = self.tokenizer(reasoning, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        n = len(offsets)
        drop = len(tokens.ids) - limit + len(self.tokenizer(TRUNCATION_MARK, add_special_tokens=False)["input_ids"])
        for _ in range(8):                 # re-tokenising at the cut may differ by a token or two
            if drop >= n:
                break
            head = (n - drop) // 2
            tail = n - drop - head
            text = (reasoning[:offsets[head - 1][1]] if head else "") + TRUNCATION_MARK + \
                (reasoning[offsets[n - tail][0]:] if tail else "")
            cut = turns[:-1] + [dataclasses.replace(last, reasoning=text)]
            tokens = self._tokenize(self.chat_text(cut, tools=tools), media, cut)
            over = len(tokens.ids) - limit
            if over <= 0:
                return cut, tokens
            drop += over
        raise RenderError("too_long", f"{why}, even with its reasoning trace cut to nothing (the answer "
                          "and end-of-turn token are never cut)")

    def _expand_vision(self, tokens: "_Tokens", media: list[ResolvedMedia]) -> "_Tokens":
        """Replace each placeholder by what the processor puts there: `n` copies of the
        image pad token; for a video, the ids the processor itself wrote in place of the
        template's whole video placeholder (`placeholder_ids`, measured by the media
        stage), which start and end with special tokens and so tokenise the same alone."""
        ids = tokens.ids
        images = [m for m in media if m.kind == "image"]
        videos = [m for m in media if m.kind == "video"]
        n_img = sum(1 for t in ids if t == self.image_token_id)
        n_vid = sum(1 for t in ids if t == self.video_token_id)
        if n_img != len(images) or n_vid != len(videos):
            raise RenderError("placeholder_mismatch",
                              f"the chat template placed {n_img} image and {n_vid} video slots "
                              f"for {len(images)} images and {len(videos)} videos")
        if not media:
            return tokens
        out = _Tokens.unlabelled([])
        it_img, it_vid = iter(images), iter(videos)
        wrapper = self.video_placeholder_ids
        i = 0
        while i < len(ids):
            t = ids[i]
            if t == self.image_token_id:
                out.extend_unlabelled([t] * next(it_img).num_tokens)
            elif t == self.video_token_id or ids[i:i + len(wrapper)] == wrapper:
                video = next(it_vid)
                out.extend_unlabelled(self._video_span(video))
                if t != self.video_token_id:
                    i += len(wrapper) - 1
            else:
                out.copy(tokens, i)
            i += 1
        return out

    def _video_span(self, video: ResolvedMedia) -> list[int]:
        span = list(video.meta.get("placeholder_ids") or [])
        if span.count(self.video_token_id) != video.num_tokens:
            raise RenderError("corrupt_media", "the processor's video placeholder does not hold "
                              f"{video.num_tokens} video tokens")
        return span

    def _media_columns(self, media: list[ResolvedMedia]) -> dict:
        return {
            "images": [m.path for m in media if m.kind == "image"],
            "image_grid_thw": [list(m.grid_thw) for m in media if m.kind == "image"],
            "videos": [m.path for m in media if m.kind == "video"],
            "video_grid_thw": [list(m.grid_thw) for m in media if m.kind == "video"],
        }

    def _finish(self, tokens: "_Tokens", media, turns, truncated: bool) -> dict:
        n_label = sum(1 for x in tokens.labels if x != IGNORE_INDEX)
        if n_label == 0:
            raise RenderError("empty_assistant", "no assistant tokens to learn from (every reply is "
                              "empty or has loss weight 0)")
        labelled = [w for w, x in zip(tokens.weights, tokens.labels) if x != IGNORE_INDEX]
        reasoning_chars = sum(len(t.reasoning or "") for t in turns if t.role == "assistant")
        return {
            "input_ids": tokens.ids, "labels": tokens.labels, "label_span": tokens.spans,
            "loss_weights": None if all(w == 1.0 for w in labelled) else tokens.weights,
            **self._media_columns(media),
            "num_tokens": len(tokens.ids), "num_label_tokens": n_label,
            "num_vision_tokens": sum(m.num_tokens for m in media),
            "reasoning_chars": reasoning_chars, "truncated": truncated,
        }


@dataclass
class _Tokens:
    """Parallel per-token columns of a sample being rendered."""
    ids: list[int]
    labels: list[int]
    spans: list[int]
    weights: list[float]

    @classmethod
    def unlabelled(cls, ids: list[int]) -> "_Tokens":
        n = len(ids)
        return cls(list(ids), [IGNORE_INDEX] * n, [SPAN_NONE] * n, [0.0] * n)

    def label(self, i: int, span: int, weight: float) -> None:
        self.labels[i], self.spans[i], self.weights[i] = self.ids[i], span, weight

    def copy(self, other: "_Tokens", i: int) -> None:
        self.ids.append(other.ids[i])
        self.labels.append(other.labels[i])
        self.spans.append(other.spans[i])
        self.weights.append(other.weights[i])

    def extend_unlabelled(self, ids: list[int]) -> None:
        n = len(ids)
        self.ids += ids
        self.labels += [IGNORE_INDEX] * n
        self.spans += [SPAN_NONE] * n
        self.weights += [0.0] * n
