"""Generation prompts for eval (`data/prompts.py`, shared with objective grpo) and blank
media for image reliance."""

from __future__ import annotations

from PIL import Image

from ..data.prompts import Prompt, generation_prefix, prompt_from_sample

__all__ = ["Prompt", "blank_media", "generation_prefix", "prompt_from_sample"]


def blank_media(batch: dict) -> dict:
    """The same prompt with every image and video frame replaced by white of the same size."""
    from ..data.video import load_video
    images = []
    for path in batch["images"]:
        with Image.open(path) as img:
            images.append(Image.new("RGB", img.size, (255, 255, 255)))
    videos = [load_video(v).blank() for v in batch["videos"]]
    return {**batch, "images": images, "videos": videos}
