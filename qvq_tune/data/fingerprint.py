"""What decides a build's bytes, hashed: the fingerprint that lets a re-run reuse a build.

The fingerprint covers the input files (size and mtime), the settings (`BuildConfig`
fields that can change the output), the model's processor and template files
(`processor_hash`) and the data stage's code (`code_version`); `cache.json` beside the
report adds the size and mtime of every media file read, checked by `cached_report`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import __version__
from .media import file_stat
from .training_data import FILE as TRAINING_DATA

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
# Files of a checkpoint folder that say what it was trained on, not how it reads input: a record
# added to a folder later (the tiny base's) leaves the datasets built with it valid.
_NOT_PROCESSOR = (TRAINING_DATA,)


def _source_hash(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(str(p) for p in paths):
        h.update(Path(p).name.encode() + b"\0" + Path(p).read_bytes())
    return h.hexdigest()


def code_version() -> str:
    """Package version plus a hash of the data-stage sources."""
    here = Path(__file__).parent
    return f"{__version__}+{_source_hash(here.rglob('*.py'))[:12]}"


def processor_hash(model_dir: Path) -> str:
    """Hash of everything in a checkpoint folder but the weights and its training-data record
    (tokenizer, template, processor)."""
    files = [p for p in sorted(model_dir.iterdir())
             if p.is_file() and p.suffix not in _WEIGHT_SUFFIXES and p.name not in _NOT_PROCESSOR]
    return _source_hash(files)


def file_stats(files: list[Path]) -> list:
    out = []
    for f in files:
        for p in ([f] if f.is_file() else sorted(q for q in f.rglob("*") if q.is_file())):
            st = p.stat()
            out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cached_report(report_file: Path, cache_file: Path, fingerprint: str) -> dict | None:
    """The previous build's report when its fingerprint equals this one, its outputs are
    still there and no media file it read changed (size and mtime), else None."""
    try:
        report = json.loads(report_file.read_text())
        cache = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if report.get("fingerprint") != fingerprint or cache.get("fingerprint") != fingerprint:
        return None
    if any(p and not Path(p).exists() for p in report.get("outputs", {}).values()):
        return None
    for path, stat in cache.get("media", {}).items():
        if file_stat(path) != (tuple(stat) if stat else None):
            return None
    return report


def fingerprint(files: list[Path], settings: dict, model_info: dict) -> str:
    """The hash of everything that decides a build's output."""
    return hashlib.sha256(json.dumps(
        {"inputs": file_stats(files), "settings": settings, "model": model_info, "code": code_version()},
        sort_keys=True).encode()).hexdigest()
