"""Videos: decoded and sampled once, read back with their timeline, encoded explicitly.

- `decode_video` samples a video file the way qwen-vl-utils does (its `smart_nframes`
  with fps / min / max frames; indices `linspace(0, total - 1, n).round()`; PyAV decodes,
  since torchvision no longer reads video). The builder writes the frames into a folder
  with `meta.json` (`media.py`).
- `load_video` reads such a folder (or a list of frame files, or a video file) back as a
  `Video`: the frames and where they sit on the source's timeline (its fps, each frame's
  index, the total frame count).
- `encode_videos` runs the model's video processor with everything that decides the
  tokens passed explicitly: the frames already sampled (`do_sample_frames=False`), their
  real metadata (Qwen3-VL writes a `<t seconds>` marker per frame from it: without it
  the processor guesses an fps, and that guess changed between transformers releases),
  and the per-frame pixel cap. The builder counts tokens with it and the collator makes
  pixels with it, so a built sample and its batch agree on every release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .quarantine import RecordError

DEFAULT_FPS = 2.0                           # qwen-vl-utils' FPS
DEFAULT_MIN_FRAMES = 4                      # qwen-vl-utils' FPS_MIN_FRAMES
DEFAULT_MAX_FRAMES = 32                     # qwen-vl-utils allows 768; 32 keeps CPU runs sane
FRAME_LIST_FPS = 2.0                        # a video given as frame images: qwen-vl-utils' `sample_fps` default
FRAMES_META = "meta.json"
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Qwen3-VL's video processor (transformers >= 5.2x) can cap each frame's pixels as
# qwen-vl-utils does; its default is changing between releases. We keep the uncapped
# behaviour, the only one older releases have, so a dataset built under one supported
# release trains under another with the same tokens; the frame size stays bounded by the
# build's max_pixels.
CAP_PIXELS_PER_FRAME = False

if TYPE_CHECKING:      # torch is imported where frames are made: the CLI parser imports this module
    import torch


@dataclass
class Video:
    """Sampled frames and where they sit on the source video's timeline."""
    frames: torch.Tensor                    # (T, C, H, W) uint8
    fps: float                              # frames per second of the source timeline
    indices: list[int]                      # each frame's index on that timeline
    total_frames: int

    def metadata(self):
        from transformers.video_utils import VideoMetadata
        t, _, h, w = self.frames.shape
        return VideoMetadata(total_num_frames=self.total_frames, fps=self.fps, width=w, height=h,
                             duration=self.total_frames / self.fps, frames_indices=list(self.indices))

    def blank(self) -> "Video":
        """The same timeline with every frame white."""
        import torch
        return Video(torch.full_like(self.frames, 255), self.fps, list(self.indices), self.total_frames)


def video_kwargs(video_processor, videos: list[Video]) -> dict:
    """The video-processor (or processor) keyword arguments that decide these videos' tokens."""
    kwargs = {"video_metadata": [v.metadata() for v in videos], "do_sample_frames": False,
              "return_metadata": True}
    accepted = getattr(getattr(video_processor, "valid_kwargs", None), "__annotations__", {})
    if "cap_pixels_per_frame" in accepted:
        kwargs["cap_pixels_per_frame"] = CAP_PIXELS_PER_FRAME
    return kwargs


def encode_videos(video_processor, videos: list[Video]):
    """`pixel_values_videos`, `video_grid_thw` and `video_metadata` of already sampled videos."""
    return video_processor(videos=[v.frames for v in videos], return_tensors="pt",
                           **video_kwargs(video_processor, videos))


def seconds_per_grid(video_processor, videos: list[Video]) -> torch.Tensor:
    """Seconds of the source each temporal grid step spans (`temporal_patch_size` frames at
    the sampled rate), per video: Qwen2.5-VL's `second_per_grid_ts`, computed from the same
    metadata as its processor does. Its model spaces video positions by it; without it the
    model assumes 1 s, right only for videos sampled at exactly 2 fps."""
    import torch
    return torch.tensor([video_processor.temporal_patch_size / v.metadata().sampled_fps for v in videos])


def load_video(source) -> Video:
    """A frames folder written by the builder (what `videos` holds in a built dataset), a
    list of frame image paths, or a video file (sampled with the default settings)."""
    import numpy as np
    import torch

    from .vision import open_rgb

    def stacked(images) -> torch.Tensor:
        if not images:
            raise ValueError(f"no frames in {source}")
        return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).contiguous()

    if isinstance(source, (list, tuple)):
        images = [open_rgb(str(p)) for p in source]
        return Video(stacked(images), FRAME_LIST_FPS, list(range(len(images))), len(images))
    path = Path(source)
    if path.is_dir():
        names = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        frames = stacked([open_rgb(str(p)) for p in names])
        meta = json.loads((path / FRAMES_META).read_text()) if (path / FRAMES_META).is_file() else {}
        indices = meta.get("frames_indices") or list(range(len(names)))
        total = meta.get("total_frames") or meta.get("frames_given") or len(names)
        return Video(frames, meta.get("video_fps") or FRAME_LIST_FPS, list(indices), int(total))
    images, meta = decode_video(str(path))
    return Video(stacked(images), meta["video_fps"], meta["frames_indices"], meta["total_frames"])


def load_video_frames(source) -> torch.Tensor:
    """Just the frames of `load_video(source)`, as a uint8 tensor (T, C, H, W)."""
    return load_video(source).frames


def decode_video(source, *, fps: float = DEFAULT_FPS, min_frames: int = DEFAULT_MIN_FRAMES,
                 max_frames: int = DEFAULT_MAX_FRAMES, max_pixels: int | None = None):
    """Sampled RGB frames of a video file (path or file object) and the sampling record
    (`video_fps`, `total_frames`, `frames_indices`, ...). Raises RecordError
    (corrupt_media / pixel_limit)."""
    import av
    import torch
    from qwen_vl_utils.vision_process import smart_nframes

    def _open():
        if hasattr(source, "seek"):
            source.seek(0)
        return av.open(source)

    try:
        with _open() as container:
            if not container.streams.video:
                raise RecordError("corrupt_media", "has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            video_fps = float(rate) if rate else 24.0
            w, h = stream.codec_context.width, stream.codec_context.height
            if max_pixels is not None and w * h > max_pixels:
                raise RecordError("pixel_limit", f"frames are {w}x{h}, over the limit of {max_pixels:,} pixels")
            total = stream.frames
        if not total:
            with _open() as container:
                total = sum(1 for _ in container.decode(video=0))
        for _ in range(2):     # a container may overstate its frame count: retry with the real one
            if total < 2:
                raise RecordError("corrupt_media", f"has {total} decodable frame(s); at least 2 are needed")
            ele = {"fps": fps, "min_frames": min_frames, "max_frames": max_frames}
            nframes = smart_nframes(ele, total_frames=total, video_fps=video_fps)
            idx = torch.linspace(0, total - 1, nframes).round().long().tolist()
            wanted, frames, seen = set(idx), {}, 0
            with _open() as container:
                for i, frame in enumerate(container.decode(video=0)):
                    seen = i + 1
                    if i in wanted:
                        frames[i] = frame.to_image()
                    if i >= idx[-1]:
                        break
            if len(frames) == len(wanted):
                break
            total = seen
        else:
            raise RecordError("corrupt_media", "frames could not be decoded consistently")
    except RecordError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise RecordError("corrupt_media", f"cannot be decoded as a video ({type(exc).__name__}: {exc})") from None
    meta = {"video_fps": video_fps, "total_frames": total, "frames_indices": idx,
            "sample_fps": nframes / total * video_fps, "fps": fps, "min_frames": min_frames,
            "max_frames": max_frames}
    return [frames[i].convert("RGB") for i in idx], meta
