"""LLaVA's conversation records.

{"id"?, "image": "a.png" | ["a.png", "b.png"], "video"?: "clip.mp4" | [frame paths],
 "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                   {"from": "gpt", "value": "A red square."}, ...]}

The n-th `<image>` placeholder binds to the n-th image. LLaVA's convention when a record
has media but no placeholder at all: the media go before the first user text. In a
video-only record `<image>` stands for the video (LLaVA-Video's convention).

Detection: a `conversations` key plus a singular `image` or `video` key (ShareGPT and
LLaMA-Factory use the plural `images` / `videos`; those go to `readers/sharegpt.py`, and
a text-only LLaVA record reads the same through either).
"""

from __future__ import annotations

from ..messages import Origin
from .base import register
from .native import is_native
from .sharegpt import MediaBinder, read_dialogue


def _is_llava(r: dict) -> bool:
    return "conversations" in r and ("image" in r or "video" in r) and not is_native(r)


@register("llava", _is_llava)
def read_llava(record: dict, origin: Origin):
    video_only = "video" in record and record.get("image") is None
    tokens = {"image": "video", "video": "video"} if video_only else None
    return read_dialogue(record, origin, "conversations", MediaBinder(record, tokens), implicit=True)
