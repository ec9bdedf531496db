"""Shared fixtures: tiny zoo checkpoints (built once per session) and an isolated cache.

Tests never read or write the user's cache: `QVQ_TUNE_CACHE` points at a folder made for
this test run (inherited by every subprocess the tests start) and removed at the end, so
the tiny base and every other cached artefact is rebuilt and re-measured by each run.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_CACHE = tempfile.mkdtemp(prefix="qvq-tune-test-cache-")
os.environ["QVQ_TUNE_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def tiny_model(zoo_dir):
    """tiny_model(family) -> folder of a tiny random checkpoint of that family (cached per session)."""
    from qvq_tune.tiny.zoo import build_tiny

    def get(family: str = "qwen2_vl") -> Path:
        path = zoo_dir / family
        if not (path / "config.json").is_file():
            build_tiny(family, path)
        return path
    return get


# ---- media files for the data-build tests (test_build.py, test_media.py, test_render.py) ----
class MediaFiles:
    """Writes small real media files (and broken ones) under one folder."""

    def __init__(self, root: Path):
        import numpy as np
        self.root = root
        self.rng = np.random.default_rng(0)

    def _pixels(self, w: int, h: int):
        return self.rng.integers(0, 255, (h, w, 3), dtype="uint8")

    def image(self, name: str, w: int = 112, h: int = 112, **save) -> str:
        from PIL import Image
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self._pixels(w, h)).save(path, **save)
        return name

    def image_bytes(self, w: int = 112, h: int = 112, fmt: str = "PNG") -> bytes:
        import io
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(self._pixels(w, h)).save(buf, format=fmt)
        return buf.getvalue()

    def bomb_png(self, name: str, w: int = 100_000, h: int = 100_000) -> str:
        """A tiny PNG whose header claims w x h pixels."""
        import struct
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        (self.root / name).write_bytes(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
        return name

    def video(self, name: str, frames: int = 12, w: int = 96, h: int = 64, fps: int = 4) -> str:
        import av
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for _ in range(frames):
                frame = av.VideoFrame.from_ndarray(self._pixels(w, h), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return name

    def write(self, name: str, data: bytes | str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return name


@pytest.fixture
def media_files(tmp_path) -> MediaFiles:
    """media_files.image("a.png", w, h), .video(...), .bomb_png(...), .write(...) under tmp_path/media_root."""
    root = tmp_path / "media_root"
    root.mkdir()
    return MediaFiles(root)


@pytest.fixture(scope="session")
def built_train(tiny_model, tmp_path_factory):
    """A small synthetic task built with the tiny qwen2_vl's processor: {"train": dir, "test": dir}."""
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.synth.generate import SynthConfig, generate
    root = tmp_path_factory.mktemp("train_data")
    generate(SynthConfig(train=64, validation=0, test=16, dpo=False), root / "raw", progress=False)
    out = {}
    for split in ("train", "test"):
        build(BuildConfig(input=str(root / "raw" / f"{split}.jsonl"), model=str(tiny_model("qwen2_vl")),
                          out=str(root / split), reasoning="qvq", workers=1))
        out[split] = root / split
    return out


def make_recipe(tmp_path, model, data, *, steps: int = 4, batch: int = 4, **over):
    """A small SFT recipe on `data`; `over` sets dotted keys (`**{"optim.lr": 0.001}`)."""
    from qvq_tune.recipe import apply_overrides, recipe_from_dict

    base = {"name": "t", "model": str(model), "method": "qlora", "output_dir": str(tmp_path),
            "data": {"train": str(data)},
            "optim": {"max_steps": steps, "per_device_batch_size": batch, "lr": 0.005, "warmup_steps": 1,
                      "logging_steps": 1}}
    return recipe_from_dict(apply_overrides(base, over))
