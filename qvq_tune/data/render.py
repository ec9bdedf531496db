"""Messages -> samples: the one place that knows Qwen's image tokens, chat template and labels.

`SampleRenderer` renders a `Conversation` with the model's own processor and chat
template (`processor.apply_chat_template`), tokenises it once with character offsets,
puts loss only on assistant replies (reasoning, answer and the end-of-turn token), and
expands each image/video placeholder to the number of vision tokens the processor
computes for that media. Pixels are not produced here: samples keep media references
and the collator turns them into pixels (see `train/collators.py`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..models.registry import ModelFamily
from .messages import Conversation, PreferencePair, Turn
from .reasoning import PairCut, ReasoningFormat, cut_pair, format_reply

IGNORE_INDEX = -100


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
        self._specials = family.control_tokens

    # ---- messages in the processor's format -------------------------------------------
    def to_chat(self, turns: list[Turn]) -> list[dict]:
        chat: list[dict] = []
        if self.options.system_prompt is not None and (not turns or turns[0].role != "system"):
            chat.append({"role": "system", "content": self.options.system_prompt})
        for turn in turns:
            if turn.role == "assistant":
                chat.append({"role": "assistant",
                             "content": self.format_reply(turn)})
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
        return format_reply(turn.reasoning, turn.text, self.options.reasoning, self.family.think_tokens)

    def chat_text(self, turns: list[Turn], *, add_generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(self.to_chat(turns), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    # ---- samples ------------------------------------------------------------------------
    def check_text(self, turns: list[Turn]) -> None:
        for i, turn in enumerate(turns):
            for text in (turn.text, turn.reasoning or ""):
                for s in self._specials:
                    if s in text:
                        raise RenderError("special_token_in_text",
                                          f"turn {i} ({turn.role}) contains the control token {s!r}")

    def render(self, conv: Conversation, media: list[ResolvedMedia]) -> dict:
        """A training sample: input_ids, labels and media references."""
        self.check_text(conv.turns)
        text = self.chat_text(conv.turns)
        ids, labels = self._tokenize_with_labels(text, media)
        return self._finish(ids, labels, media, conv.turns)

    def render_prompt(self, turns: list[Turn], media: list[ResolvedMedia]) -> dict:
        """A generation prompt (for evaluation): the turns plus the assistant header."""
        self.check_text(turns)
        text = self.chat_text(turns, add_generation_prompt=True)
        ids, _ = self._tokenize_with_labels(text, media, label=False)
        return {"input_ids": ids, **self._media_columns(media)}

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
    def assistant_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of assistant replies: after each assistant header, through the
        end-of-turn token."""
        header, end = self.family.assistant_header, self.family.turn_end
        spans, pos = [], 0
        while True:
            h = text.find(header, pos)
            if h < 0:
                return spans
            start = h + len(header)
            e = text.find(end, start)
            stop = len(text) if e < 0 else e + len(end)
            spans.append((start, stop))
            pos = stop

    def _tokenize_with_labels(self, text: str, media: list[ResolvedMedia], *, label: bool = True):
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=label)
        ids: list[int] = enc["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        if label:
            spans = self.assistant_spans(text)
            starts = [s for s, _ in spans]
            for i, (a, b) in enumerate(enc["offset_mapping"]):
                k = bisect.bisect_right(starts, a) - 1
                if k >= 0 and b <= spans[k][1]:
                    labels[i] = ids[i]
        return self._expand_vision(ids, labels, media)

    def _expand_vision(self, ids, labels, media):
        """Replace each placeholder token by what the processor puts there: `n` copies of
        the pad token, or (Qwen3-VL video) the processor's own replacement text, which
        starts and ends with special tokens and so tokenises the same on its own."""
        images = [m for m in media if m.kind == "image"]
        videos = [m for m in media if m.kind == "video"]
        n_img = sum(1 for t in ids if t == self.image_token_id)
        n_vid = sum(1 for t in ids if t == self.video_token_id)
        if n_img != len(images) or n_vid != len(videos):
            raise RenderError("placeholder_mismatch",
                              f"the chat template placed {n_img} image and {n_vid} video slots "
                              f"for {len(images)} images and {len(videos)} videos")
        out_ids, out_labels = [], []
        it_img, it_vid = iter(images), iter(videos)
        for t, lab in zip(ids, labels):
            if t == self.image_token_id:
                span = [t] * next(it_img).num_tokens
            elif t == self.video_token_id:
                span = self._video_span(next(it_vid))
            else:
                out_ids.append(t)
                out_labels.append(lab)
                continue
            out_ids.extend(span)
            out_labels.extend([IGNORE_INDEX] * len(span))
        return out_ids, out_labels

    def _video_span(self, video: ResolvedMedia) -> list[int]:
        replacement = video.meta.get("replacement")
        if not replacement:
            return [self.video_token_id] * video.num_tokens
        span = self.tokenizer(replacement, add_special_tokens=False)["input_ids"]
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

    def _finish(self, ids, labels, media, turns) -> dict:
        limit = self.options.max_tokens
        if limit and len(ids) > limit:
            if not self.options.truncate:
                raise RenderError("too_long", f"{len(ids)} tokens > --max-tokens {limit} "
                                  "(reasoning is never cut silently; pass --truncate to cut)")
            if any(t in (self.image_token_id, self.video_token_id) for t in ids[limit:]):
                raise RenderError("too_long", f"{len(ids)} tokens > --max-tokens {limit} and the "
                                  "cut would fall inside vision tokens")
            ids, labels = ids[:limit], labels[:limit]
        n_label = sum(1 for x in labels if x != IGNORE_INDEX)
        if n_label == 0:
            raise RenderError("empty_assistant", "no assistant tokens to learn from")
        reasoning_chars = sum(len(t.reasoning or "") for t in turns if t.role == "assistant")
        return {
            "input_ids": ids, "labels": labels, **self._media_columns(media),
            "num_tokens": len(ids), "num_label_tokens": n_label,
            "num_vision_tokens": sum(m.num_tokens for m in media),
            "reasoning_chars": reasoning_chars,
        }
