"""The settings of one `qvq-tune data build`: `BuildConfig`, validated when made.

Each field is a `data build` flag (`cli/args.py` generates them from the field's type,
default and metadata) and enters the build fingerprint (`data/fingerprint.py`) unless
its metadata says `fingerprint=False` (it cannot change the output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .media import DEFAULT_MAX_IMAGE_PIXELS
from .readers import FORMATS as INPUT_FORMATS
from .readers import parse_columns
from .reasoning import FORMATS as REASONING_FORMATS
from .reasoning import PAIR_CUTS
from .trace_filters import DEFAULT_MAX_TRACE_TOKENS, FILTERS, parse_filters
from .video import DEFAULT_FPS, DEFAULT_MAX_FRAMES


def _option(default, help: str, **meta):
    """A BuildConfig field: its `data build` flag is generated from it (`cli/args.py`), and
    it enters the build fingerprint unless `fingerprint=False` (it cannot change the output)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class BuildConfig:
    """Settings of one build; each field is a `qvq-tune data build` flag."""
    input: str = field(metadata={"help": ".jsonl/.json/.parquet/.arrow file, HF datasets folder, or a folder of them",
                                 "metavar": "FILE_OR_DIR"})
    model: str = field(metadata={"help": "checkpoint folder, 'tiny' (the embedded base), or a family name "
                                         "(a tiny offline model of it is built)",
                                 "metavar": "DIR_OR_FAMILY", "fingerprint": False})   # model_info covers it
    out: str = field(metadata={"help": "output folder", "metavar": "DIR"})
    format: str = _option("auto", "input format (auto: detected per record)", choices=INPUT_FORMATS)
    image_root: str | None = _option(None, "folder relative media paths start from, and must stay inside "
                                           "(default: the input file's folder)", metavar="DIR")
    reasoning: str | None = _option(None, "how replies are written (default: the model's style)",
                                    choices=REASONING_FORMATS)
    min_pixels: int | None = _option(None, "processor min pixels per image / video frame", metavar="N")
    max_pixels: int | None = _option(None, "processor max pixels per image / video frame", metavar="N")
    max_tokens: int | None = _option(None, "quarantine samples longer than N tokens", metavar="N")
    truncate: bool = _option(False, "fit samples over --max-tokens: drop the earliest exchanges, then cut "
                                    "the middle of the reasoning trace (never the answer)")
    strict: bool = _option(False, "stop at the first bad record")
    keep_duplicates: bool = _option(False, "keep exact duplicates (by default they are quarantined)")
    num_shards: int = _option(1, "split the input into N slices built separately (e.g. a Slurm array); "
                                 "join them with `qvq-tune data merge`", metavar="N")
    shard_index: int = _option(0, "the slice this build makes, 0 .. N-1", metavar="I")
    columns: dict[str, str] = _option({}, "rename your fields, e.g. question=problem,answer=solution",
                                      metavar="CANONICAL=YOURS,...", parse=parse_columns)
    allow_remote: bool = _option(False, "download http(s) media")
    workers: int | None = _option(None, "processes (default: min(4, CPUs))", metavar="N", fingerprint=False)
    system: str | None = _option(None, "system prompt for records without one", metavar="TEXT")
    fps: float = _option(DEFAULT_FPS, "video frames sampled per second")
    max_frames: int = _option(DEFAULT_MAX_FRAMES, "frames per video at most")
    max_image_pixels: int = _option(DEFAULT_MAX_IMAGE_PIXELS,
                                    "larger images are quarantined (decompression-bomb guard)")
    pair_cut: str = _option("none", "cut preference pairs where chosen and rejected first differ: at the "
                                    "divergence point (word) or at reasoning-step boundaries; the shared "
                                    "start joins the prompt", choices=PAIR_CUTS)
    reuse: bool = _option(True, "rebuild even if nothing changed", flag="--no-cache", fingerprint=False)
    filters: tuple[str, ...] = _option((), "quarantine replies that fail these reasoning checks: "
                                       + ", ".join(FILTERS), flag="--filter", metavar="CHECK,...",
                                       parse=parse_filters)
    max_trace_tokens: int = _option(DEFAULT_MAX_TRACE_TOKENS, "--filter too-long: longest reasoning trace kept",
                                    metavar="N")
    data_license: str | None = _option(None, "the data's licence for training-data summaries (an SPDX id such as "
                                             "cc-by-4.0, or free text); default: the license: of a dataset card "
                                             "(README.md) beside or above each input file", metavar="ID")
    data_name: str | None = _option(None, "the data's name in training-data summaries; a Hub id OWNER/NAME also "
                                          "goes into exported model cards' datasets: (default: from a Hub cache "
                                          "path, else the input's name)", metavar="NAME")

    def __post_init__(self):
        if self.format not in INPUT_FORMATS:
            raise UserError(f"unknown --format {self.format!r}; choose from {', '.join(INPUT_FORMATS)}",
                            key="format")
        if self.pair_cut not in PAIR_CUTS:
            raise UserError(f"unknown --pair-cut {self.pair_cut!r}; choose from {', '.join(PAIR_CUTS)}",
                            key="pair_cut")
        if self.reasoning is not None and self.reasoning not in REASONING_FORMATS:
            raise UserError(f"unknown --reasoning {self.reasoning!r}; choose from "
                            f"{', '.join(REASONING_FORMATS)}", key="reasoning")
        self.filters = parse_filters(self.filters if isinstance(self.filters, str) else ",".join(self.filters))
        for name in ("min_pixels", "max_pixels", "max_tokens", "workers", "max_frames", "max_image_pixels",
                     "max_trace_tokens", "num_shards"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}",
                                key=name)
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise UserError(f"--min-pixels {self.min_pixels} is larger than --max-pixels {self.max_pixels}",
                            key="min_pixels")
        if self.max_frames < 2:
            raise UserError("--max-frames must be at least 2 (the processor's temporal patch)", key="max_frames")
        if not self.fps > 0:
            raise UserError(f"--fps must be positive, got {self.fps!r}", key="fps")
        if not isinstance(self.shard_index, int) or not 0 <= self.shard_index < self.num_shards:
            raise UserError(f"--shard-index must be 0 .. {self.num_shards - 1} (--num-shards {self.num_shards}), "
                            f"got {self.shard_index!r}", key="shard_index")
        for name in ("data_license", "data_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip() or "\n" in value):
                raise UserError(f"--{name.replace('_', '-')} must be one line of text, got {value!r}", key=name)
        if self.truncate and not self.max_tokens:
            raise UserError("--truncate needs --max-tokens", key="truncate")
        if not Path(self.input).exists():
            raise UserError("input does not exist", path=self.input)
        if self.image_root is not None and not Path(self.image_root).is_dir():
            raise UserError("--image-root is not a folder", path=self.image_root)
        inp, out = Path(self.input).resolve(), Path(self.out).resolve()
        if inp.is_dir() and out.is_relative_to(inp):
            raise UserError("--out is inside the input folder, so a later build would read its own "
                            "output; choose an output folder elsewhere", path=self.out)
        if out.exists() and not out.is_dir():
            raise UserError("--out exists and is not a folder", path=self.out)
