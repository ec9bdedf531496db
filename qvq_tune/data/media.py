"""Media references -> local, checked, measured files (`ResolvedMedia`), and video frames.

`MediaResolver.resolve(media, root)` turns one `Media` (a path, `data:` URI, bare base64,
URL, raw bytes, video file or list of frames) into a `ResolvedMedia` the renderer can
count tokens for, or raises `RecordError` with one of: `missing_media`, `empty_file`,
`corrupt_media`, `pixel_limit`, `path_escape`, `remote_url`.

- Paths are resolved against `root` (the `--image-root`, else the input file's folder)
  and must stay inside it once symlinks are resolved (no `..`, absolute path or symlink
  out); `file://` URLs are local paths; other URLs are refused unless `allow_remote`.
- Images: the header gives the size (EXIF rotation applied, as the collator's
  `open_rgb` does) and is checked against the pixel limit before any pixels are decoded;
  then the file is verified (PNG: CRCs of every chunk; others: a decode, JPEG at 1/8
  scale) so corrupt files fail at build time. Tokens come from `vision.image_grid`.
- Bytes, base64 and downloads are written content-addressed to `media_dir/<sha256>.<ext>`.
- Videos are sampled once (`video.decode_video`) into a frames folder `media_dir/<key>/`
  with `meta.json` (the source's fps, each frame's index, the frame count); samples
  reference that folder, and `video.load_video` (used by the collator) reads it back, so
  training sees exactly the frames whose grid was counted here (by `video.encode_videos`,
  the same call the collator makes, metadata included).
Each result carries `meta["sha256"]` (content hash, for duplicate detection). A local
file already resolved is reused while its size and mtime are unchanged; `touched`
records every user file read, for the build cache.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

from PIL import Image, UnidentifiedImageError

from ..models.registry import ModelFamily
from ..paths import atomic_file, publishable
from .messages import Media
from .quarantine import RecordError
from .render import ResolvedMedia
from .video import (DEFAULT_FPS, DEFAULT_MAX_FRAMES, DEFAULT_MIN_FRAMES, FRAMES_META, decode_video, load_video,
                    video_kwargs)

DEFAULT_MAX_IMAGE_PIXELS = 64_000_000       # decompression-bomb guard (64 megapixels)
MAX_DOWNLOAD_BYTES = 256 << 20
EXIF_ORIENTATION = 0x0112
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
# Bare base64 images as some datasets store them: PNG, JPEG, GIF, WEBP magic, base64-encoded.
_BASE64_IMAGE = re.compile(r"^(iVBORw0KGgo|/9j/|R0lGOD|UklGR)[A-Za-z0-9+/=\s]{64,}$")


@dataclass(frozen=True)
class MediaOptions:
    media_dir: Path                              # where bytes / downloads / video frames go
    allow_remote: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    fps: float = DEFAULT_FPS
    min_frames: int = DEFAULT_MIN_FRAMES
    max_frames: int = DEFAULT_MAX_FRAMES


@dataclass
class _Blob:
    """A medium's bytes, and the user's file they were read from (None for bytes, URIs, URLs)."""
    data: bytes
    local: Path | None


class MediaResolver:
    """Resolves media for one processor and one set of options (one per worker)."""

    def __init__(self, processor, options: MediaOptions, family: ModelFamily):
        self.processor = processor
        self.options = options
        self.family = family
        self.media_dir = Path(options.media_dir).absolute()
        self.touched: dict[str, tuple[int, int] | None] = {}   # user files read: (size, mtime_ns)
        self._cache: dict[tuple, tuple[str, tuple[int, int], ResolvedMedia]] = {}

    def drain_touched(self) -> dict[str, tuple[int, int] | None]:
        out, self.touched = self.touched, {}
        return out

    # ---- entry point ----------------------------------------------------------------
    def resolve(self, media: Media, root: str | Path) -> ResolvedMedia:
        root = Path(root)
        if media.frames:
            return self._frames(media, root)
        key = (media.kind, media.source, str(root)) if media.data is None else None
        if (hit := self._cached(key)) is not None:
            return hit
        field = f"{media.kind}s"
        blob = self._blob(media.source, media.data, root, field)
        out = (self._image if media.kind == "image" else self._video)(blob, _name(media), field)
        if blob.local is not None:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = (str(blob.local), self.touched[str(blob.local)], out)
        return out

    def _cached(self, key) -> ResolvedMedia | None:
        """Many records share an image: a local file already checked is reused while its
        size and mtime are unchanged."""
        if key not in self._cache:
            return None
        path, stat, out = self._cache[key]
        if file_stat(path) != stat:
            return None
        self.touched[path] = stat
        return out

    # ---- where the bytes come from --------------------------------------------------------
    def _blob(self, source: str | None, data: bytes | None, root: Path, field: str) -> _Blob:
        if data is not None:
            return _Blob(bytes(data), None)
        if not isinstance(source, str) or not source.strip():
            raise RecordError("missing_media", "a media entry has neither a path nor data", field=field)
        src = source.strip()
        if src.startswith("data:"):
            return _Blob(_decode_data_uri(src, field), None)
        if len(src) > 100 and _BASE64_IMAGE.match(src[:4096]):
            return _Blob(_b64(src, field), None)
        scheme = src.split("://", 1)[0].lower() if "://" in src else None
        if scheme and scheme != "file":
            return _Blob(self._download(src, scheme, field), None)
        if scheme == "file":
            src = unquote(src[len("file://"):])
        path = self._safe_path(src, root, field)
        return _Blob(self._read(path, field), Path(path))

    def _safe_path(self, src: str, root: Path, field: str) -> str:
        """The real path of `src` (relative to `root`), which must lie inside the real root."""
        root_r = _realpath(str(root))
        given = os.path.expanduser(src)
        candidate = given if os.path.isabs(given) else os.path.join(root, given)
        try:
            resolved = os.path.realpath(candidate, strict=False)
        except (OSError, ValueError) as exc:        # NUL bytes
            raise RecordError("missing_media", f"{src!r} is not a usable path ({exc})", field=field) from None
        if resolved != root_r and not resolved.startswith(root_r.rstrip(os.sep) + os.sep):
            raise RecordError("path_escape", f"{src!r} {_escape_reason(given, candidate, root, root_r, resolved)} "
                              f"{root_r}; pass --image-root to a folder that contains your media", field=field)
        if not os.path.exists(resolved):
            self.touched[resolved] = None
            raise RecordError("missing_media", f"file not found: {src!r} (looked for {resolved})", field=field)
        if not os.path.isfile(resolved):
            raise RecordError("missing_media", f"{src!r} is not a file ({resolved})", field=field)
        return resolved

    def _read(self, path: str, field: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                self.touched[path] = (st.st_size, st.st_mtime_ns)
                if st.st_size == 0:
                    raise RecordError("empty_file", f"{path} has zero bytes", field=field)
                return fh.read()
        except OSError as exc:
            raise RecordError("missing_media", f"cannot read {path}: {exc.strerror or exc}", field=field) from None

    def _download(self, url: str, scheme: str, field: str) -> bytes:
        if not self.options.allow_remote:
            raise RecordError("remote_url", f"{url!r} is remote; pass --allow-remote to download it, or "
                              "download it yourself and use a local path", field=field)
        if scheme not in ("http", "https"):
            raise RecordError("remote_url", f"{url!r}: only http(s) URLs can be downloaded", field=field)
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (scheme checked)
                data = resp.read(MAX_DOWNLOAD_BYTES + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RecordError("missing_media", f"cannot download {url!r}: {getattr(exc, 'reason', exc)}",
                              field=field) from None
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise RecordError("missing_media", f"{url!r} is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB",
                              field=field)
        if not data:
            raise RecordError("empty_file", f"{url!r} returned zero bytes", field=field)
        return data

    def _store(self, data: bytes, sha: str, ext: str) -> str:
        """Write bytes content-addressed (idempotent; concurrent writers are safe)."""
        path = self.media_dir / f"{sha}.{ext}"
        if not path.exists():
            with atomic_file(path) as tmp:
                tmp.write_bytes(data)
        return str(path)

    # ---- images ---------------------------------------------------------------------------
    def _image(self, blob: _Blob, name: str, field: str) -> ResolvedMedia:
        h, w, fmt = self._inspect_image(blob.data, name, field)
        grid, n = self._image_grid(h, w, name, field)
        sha = hashlib.sha256(blob.data).hexdigest()
        if blob.local is not None:
            path = str(blob.local)
        else:
            path = self._store(blob.data, sha, _EXTENSIONS.get(fmt, (fmt or "bin").lower()))
        return ResolvedMedia("image", path, grid, n, {"sha256": sha, "height": h, "width": w})

    def _inspect_image(self, data: bytes, name: str, field: str) -> tuple[int, int, str | None]:
        """(height, width, format) as the collator will see it; raises for bombs and corrupt files."""
        if not data:
            raise RecordError("empty_file", f"{name} has zero bytes", field=field)
        limit = self.options.max_image_pixels
        with _pil_pixel_limit(limit):
            try:
                img = Image.open(io.BytesIO(data))
            except Image.DecompressionBombError as exc:
                raise RecordError("pixel_limit", f"{name}: {exc}", field=field) from None
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise RecordError("corrupt_media", f"{name} is not a readable image ({exc})", field=field) from None
            w, h = img.size
            if w * h > limit:
                raise RecordError("pixel_limit", f"{name} is {w}x{h} = {w * h:,} pixels, over the limit of "
                                  f"{limit:,} (decompression-bomb guard; raise --max-image-pixels if it is real)",
                                  field=field)
            try:
                fmt = img.format
                if fmt == "PNG":
                    # getexif() would decode a PNG; only look when it has an eXIf chunk at all.
                    rotated = b"eXIf" in data and _rotated(Image.open(io.BytesIO(data)))
                    img.verify()          # every chunk's CRC, through IEND: catches damage and truncation
                else:
                    rotated = _rotated(img)
                    if fmt == "JPEG":
                        img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                    img.load()
                if rotated:               # open_rgb applies the EXIF rotation: 90 degrees swaps sides
                    w, h = h, w
            except Image.DecompressionBombError as exc:
                raise RecordError("pixel_limit", f"{name}: {exc}", field=field) from None
            except Exception as exc:  # noqa: BLE001 - PIL decoders raise many types; all mean "corrupt"
                raise RecordError("corrupt_media", f"{name} cannot be decoded ({type(exc).__name__}: {exc})",
                                  field=field) from None
        return h, w, fmt

    def _image_grid(self, h: int, w: int, name: str, field: str):
        from .vision import image_grid     # imported here: vision imports torch, the CLI parser must not
        try:
            return image_grid(self.processor.image_processor, h, w)
        except ValueError as exc:      # e.g. aspect ratio over 200
            raise RecordError("corrupt_media", f"{name} ({w}x{h}) cannot be processed: {exc}", field=field) from None

    # ---- videos ---------------------------------------------------------------------------
    def _sampling(self) -> dict:
        o = self.options
        return {"fps": o.fps, "min_frames": o.min_frames, "max_frames": o.max_frames}

    def _video(self, blob: _Blob, name: str, field: str) -> ResolvedMedia:
        if not blob.data:
            raise RecordError("empty_file", f"{name} has zero bytes", field=field)
        sha = hashlib.sha256(blob.data).hexdigest()
        folder = self.media_dir / _key("video", sha, self._sampling())
        if not (folder / FRAMES_META).is_file():
            frames, meta = self._decode(blob, name, field)
            meta.update(source=str(blob.local) if blob.local else None, sha256=sha)
            self._write_frames(folder, [(f"{i:06d}.png", f) for i, f in enumerate(frames)], meta)
        meta = json.loads((folder / FRAMES_META).read_text())
        return self._video_result(folder, meta, field)

    def _decode(self, blob: _Blob, name: str, field: str) -> tuple[list[Image.Image], dict]:
        source = str(blob.local) if blob.local is not None else io.BytesIO(blob.data)
        try:
            return decode_video(source, max_pixels=self.options.max_image_pixels, **self._sampling())
        except RecordError as exc:
            raise RecordError(exc.code, f"{name}: {exc.message}", field=field) from None

    def _frames(self, media: Media, root: Path) -> ResolvedMedia:
        """A video given as a list of frame images: each checked like an image."""
        field = "videos"
        blobs, shas, size = [], [], None
        for i, src in enumerate(media.frames):
            blob = self._blob(src, None, root, field)
            h, w, fmt = self._inspect_image(blob.data, f"frame {i} ({src})", field)
            if size is not None and (h, w) != size:
                raise RecordError("corrupt_media", f"frame {i} ({src}) is {w}x{h}; earlier frames are "
                                  f"{size[1]}x{size[0]}; all frames of a video must have one size", field=field)
            size = (h, w)
            blobs.append((blob, _EXTENSIONS.get(fmt, "png")))
            shas.append(hashlib.sha256(blob.data).hexdigest())
        if not blobs:
            raise RecordError("missing_media", "a video has an empty list of frames", field=field)
        idx = _uniform(len(blobs), self.options.max_frames)
        sha = hashlib.sha256("".join(shas).encode()).hexdigest()
        folder = self.media_dir / _key("frames", sha, {"max_frames": self.options.max_frames})
        if not (folder / FRAMES_META).is_file():
            meta = {"frames_given": len(blobs), "frames_indices": idx, "video_fps": None,
                    "max_frames": self.options.max_frames, "sha256": sha,
                    "source": [str(b.local) if b.local else None for b, _ in blobs]}
            self._write_frames(folder, [(f"{j:06d}.{blobs[i][1]}", blobs[i][0].data) for j, i in enumerate(idx)], meta)
        meta = json.loads((folder / FRAMES_META).read_text())
        return self._video_result(folder, meta, field)

    def _write_frames(self, folder: Path, frames: list[tuple[str, Image.Image | bytes]], meta: dict) -> None:
        """Write a frames folder once: built aside, renamed into place; a folder another
        worker placed first wins (content-addressed, so it holds the same frames)."""
        self.media_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.media_dir, prefix=f".{folder.name}.", suffix=".tmp"))
        publishable(tmp, 0o777)
        try:
            for name, frame in frames:
                if isinstance(frame, Image.Image):
                    frame.save(tmp / name, optimize=False)
                else:
                    (tmp / name).write_bytes(frame)
            (tmp / FRAMES_META).write_text(json.dumps(meta, sort_keys=True))
            try:
                os.rename(tmp, folder)
            except OSError:
                if not (folder / FRAMES_META).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _video_result(self, folder: Path, meta: dict, field: str) -> ResolvedMedia:
        """Count tokens the way the collator will (the same frames, metadata and settings),
        and ask the processor itself what its tokens are in place of the chat template's
        video placeholder (`meta["placeholder_ids"]`): vision start, video pads, vision end
        for Qwen2/2.5-VL; per-frame `<t seconds>` markers, each frame wrapped, for Qwen3-VL
        (whose processor also drops the template's outer wrapper since transformers 5.2x)."""
        video = load_video(folder)
        try:
            enc = self.processor(text=[self.family.video_placeholder], videos=[video.frames], return_tensors="pt",
                                 **video_kwargs(self.processor.video_processor, [video]))
        except ValueError as exc:
            raise RecordError("corrupt_media", f"the video processor rejects these frames: {exc}", field=field) from None
        grid = tuple(int(x) for x in enc["video_grid_thw"][0].tolist())
        merge = self.processor.video_processor.merge_size
        n = grid[0] * grid[1] * grid[2] // (merge * merge)
        ids = enc["input_ids"][0].tolist()
        return ResolvedMedia("video", str(folder), grid, n, {**meta, "placeholder_ids": ids})


# ---- helpers --------------------------------------------------------------------------------
def _name(media: Media) -> str:
    if media.source and not media.source.startswith("data:") and len(media.source) < 300:
        return repr(media.source)
    return f"an embedded {media.kind}"


@lru_cache(maxsize=64)
def _realpath(path: str) -> str:
    return os.path.realpath(path)


def file_stat(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, None when it is missing: what `touched` records."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _escape_reason(given: str, candidate: str, root: Path, root_r: str, resolved: str) -> str:
    lexical = Path(os.path.normpath(os.path.abspath(candidate)))
    if lexical.is_relative_to(os.path.normpath(os.path.abspath(root))) or lexical.is_relative_to(root_r):
        return f"is a symlink to {resolved}, outside the image root"
    if os.path.isabs(given):
        return "is an absolute path outside the image root"
    return "uses '..' to leave the image root"


def _rotated(img: Image.Image) -> bool:
    return img.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)


def _key(kind: str, sha: str, params: dict) -> str:
    blob = json.dumps({"kind": kind, "sha256": sha, **params}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError("corrupt_media", f"invalid base64 data ({exc})", field=field) from None


def _decode_data_uri(uri: str, field: str) -> bytes:
    head, sep, payload = uri.partition(",")
    if not sep:
        raise RecordError("corrupt_media", "a data: URI has no ',' before its payload", field=field)
    if head.endswith(";base64"):
        return _b64(payload, field)
    return unquote(payload).encode("latin-1", errors="replace")


@contextmanager
def _pil_pixel_limit(limit: int):
    """Make PIL's own bomb check agree with ours (it errors at 2x its limit, warns at 1x)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _uniform(total: int, limit: int) -> list[int]:
    if total <= limit:
        return list(range(total))
    import torch
    return torch.linspace(0, total - 1, limit).round().long().tolist()
