"""The build stage: user files -> validated, rendered, cached datasets that trainers load.

`build(BuildConfig(...))` reads every record (`files.iter_raw`), parses it into a
canonical example (`readers.parse`), makes its media local and measured
(`media.MediaResolver`), renders it with the model's own processor and chat template
(`render.SampleRenderer`), and writes it; every record that cannot become a sample goes
to the quarantine with a reason code instead (or stops the build with `--strict`).
Always: input records = kept + quarantined. Exact duplicates (same texts and media bytes)
are quarantined, naming the first copy, unless `--keep-duplicates`.

`--num-shards N --shard-index I` builds one deterministic slice of the input (record `p`
of the whole input, counted over all files in order, belongs to shard `p % N`), so a
cluster array job builds the slices in parallel; `data/merge.py` joins them into the
dataset an unsharded build would have written. Every sample and quarantine row carries
its `record_index` (`p`) and every sample its `content_key`, which is what the merge
orders and de-duplicates by.

Layout of OUT:
    dataset/          SFT samples, `datasets.load_from_disk` (memory-mapped Arrow)
    preference/       DPO samples, when the input holds preference pairs
    quarantine.jsonl  one row per rejected record (see quarantine.py), with its `record_index`
    report.json       counts, reasons, truncated samples, the field aliases applied (see
                      readers/base.py), how many records' replies were read in each
                      reasoning style (`reasoning_read_as`: field, think, qvq, answer-only
                      or mixed), statistics, settings, fingerprint; written last,
                      so a folder without it holds no finished build
    lengths.png       histogram of sample lengths
    media/            content-addressed bytes / base64 / downloads, video frame folders
    cache.json        fingerprint plus size and mtime of every media file read

Records are processed in chunks by `--workers` forked processes (each holding one
processor, inherited from the parent, so nothing is loaded twice) with a bounded
window of chunks in flight, so input streams through in constant memory and comes
out in input order whatever the worker count. A re-run whose fingerprint (input file
sizes and mtimes, settings, processor and template files, code) and media files are
unchanged returns the previous report with `cached: true`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter, deque
from contextlib import closing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

from .. import __version__
from ..errors import UserError
from ..paths import atomic_dir, write_json_atomic
from .files import input_files, iter_file
from .media import DEFAULT_MAX_IMAGE_PIXELS, MediaOptions, MediaResolver, file_stat
from .messages import Conversation, Origin, Turn, read_as
from .quarantine import RecordError, quarantine_row
from .readers import FORMATS as INPUT_FORMATS
from .readers import ReaderOptions, parse, parse_columns
from .video import DEFAULT_FPS, DEFAULT_MAX_FRAMES
from .reasoning import FORMATS as REASONING_FORMATS
from .reasoning import PAIR_CUTS
from .render import RenderError, RenderOptions, SampleRenderer
from .trace_filters import DEFAULT_MAX_TRACE_TOKENS, FILTERS, check_replies, parse_filters

CHUNK = 64                   # records per task sent to a worker
REPORT, CACHE, QUARANTINE, HISTOGRAM = "report.json", "cache.json", "quarantine.jsonl", "lengths.png"
SFT_DIR, DPO_DIR, MEDIA_DIR = "dataset", "preference", "media"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")


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


# ---- workers -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    """Everything a worker needs to turn raw records into samples (picklable)."""
    model_dir: str
    family: str
    min_pixels: int | None
    max_pixels: int | None
    reader: ReaderOptions
    render: RenderOptions
    media: MediaOptions
    filters: tuple[str, ...] = ()
    max_trace_tokens: int = DEFAULT_MAX_TRACE_TOKENS

    def key(self) -> str:
        return repr(self)


class _Worker:
    def __init__(self, spec: _Spec):
        from ..models.loading import load_processor
        from ..models.registry import get_family

        self.spec_key = spec.key()
        processor = load_processor(spec.model_dir, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
        self.renderer = SampleRenderer(processor, get_family(spec.family), spec.render)
        self.resolver = MediaResolver(processor, spec.media, self.renderer.family)
        self.reader = spec.reader
        self.filters, self.max_trace_tokens = spec.filters, spec.max_trace_tokens

    def run(self, chunk: tuple[str, list]) -> tuple[list[tuple], dict]:
        root, items = chunk
        outcomes = [self.one(origin, raw, error, Path(root)) for origin, raw, error, _ in items]
        return outcomes, self.resolver.drain_touched()

    def one(self, origin: Origin, raw, error, root: Path) -> tuple:
        """("sft" | "dpo", sample, content key, aliases, read as) or ("bad", (code, message, field),
        None, aliases, read as); `aliases` is the field mapping `readers.parse` applied ("" for
        none), `read as` how its replies' reasoning was read (None when it did not parse)."""
        if error is not None:
            return "bad", error, None, "", None
        example = None
        try:
            example = parse(raw, origin, self.reader)
            check_replies(example, self.filters, self.count_tokens, self.max_trace_tokens)
            media = [self.resolver.resolve(m, root) for m in example.media]
            if isinstance(example, Conversation):
                kind, sample = "sft", self.renderer.render(example, media)
            else:
                kind, sample = "dpo", self.renderer.render_pair(example, media)
        except RecordError as exc:
            return "bad", (exc.code, exc.message, exc.field), None, aliases_text(example), _read_as(example)
        except RenderError as exc:
            return "bad", (exc.code, str(exc), None), None, aliases_text(example), _read_as(example)
        record_id = example.meta.get("id")
        sample.update(id=str(record_id) if record_id is not None else origin.where(),
                      source=origin.source, line=origin.line, index=origin.index)
        return kind, sample, content_key(example, media), aliases_text(example), read_as(example)

    def count_tokens(self, text: str) -> int:
        return len(self.renderer.tokenizer(text, add_special_tokens=False)["input_ids"])


def aliases_text(example) -> str:
    """The field aliases a parsed record was read with, as the report lists them."""
    aliases = example.meta.get("aliases") if example is not None else None
    return ", ".join(f"{k}={v}" for k, v in sorted(aliases.items())) if aliases else ""


def _read_as(example) -> str | None:
    return read_as(example) if example is not None else None


_STATE: _Worker | None = None


def _worker_for(spec: _Spec) -> _Worker:
    global _STATE
    if _STATE is None or _STATE.spec_key != spec.key():
        _STATE = _Worker(spec)
    return _STATE


def _init_worker(spec: _Spec) -> None:
    import torch
    torch.set_num_threads(1)
    _worker_for(spec)          # forked: inherited from the parent, nothing to load


def _run_chunk(chunk) -> tuple[list[tuple], dict]:
    return _STATE.run(chunk)


def _results(spec: _Spec, chunks: Iterator, workers: int) -> Iterator[tuple]:
    """(chunk, outcomes, touched) in input order, at most 2 x workers chunks in flight."""
    worker = _worker_for(spec)     # load once here; forked workers inherit it
    if workers == 1:
        for chunk in chunks:
            yield (chunk, *worker.run(chunk))
        return
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(spec,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(_run_chunk, (chunk,))))
            if len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield (done, *result.get())
        while pending:
            done, result = pending.popleft()
            yield (done, *result.get())


def _chunks(files: list[Path], image_root: str | None, num_shards: int = 1,
            shard_index: int = 0) -> Iterator[tuple[str, list]]:
    """(image root, [(origin, raw, error, record_index), ...]) for this shard's records."""
    position = -1
    for f in files:
        root = str(Path(image_root).resolve() if image_root else (f.parent if f.is_file() else f).resolve())
        items: list = []
        for origin, raw in iter_file(f):
            position += 1
            if position % num_shards != shard_index:
                continue
            if isinstance(raw, RecordError):     # malformed JSON: keep its text for the quarantine
                items.append((origin, getattr(raw, "record", None), (raw.code, raw.message, raw.field), position))
            else:
                items.append((origin, raw, None, position))
            if len(items) == CHUNK:
                yield root, items
                items = []
        if items:
            yield root, items


def content_key(example, media) -> bytes:
    """Hash of the canonical record: roles, texts, reasoning, loss weights, media kinds and bytes."""
    def turn(t: Turn) -> list:
        return [t.role, t.reasoning, [[p.kind, p.text] for p in t.parts], t.loss_weight]
    if isinstance(example, Conversation):
        body = {"turns": [turn(t) for t in example.turns]}
    else:
        body = {"prompt": [turn(t) for t in example.prompt], "chosen": turn(example.chosen),
                "rejected": turn(example.rejected)}
    body["media"] = [[m.kind, m.meta.get("sha256")] for m in media]
    return hashlib.sha256(json.dumps(body, ensure_ascii=False).encode()).digest()[:16]


# ---- output -------------------------------------------------------------------------------
def _features(kind: str):
    from datasets import Features, List, Value
    ids, paths, grids = List(Value("int32")), List(Value("string")), List(List(Value("int32")))
    media = {"images": paths, "image_grid_thw": grids, "videos": paths, "video_grid_thw": grids}
    origin = {"id": Value("string"), "source": Value("string"), "line": Value("int64"),
              "index": Value("int64"), "record_index": Value("int64"), "content_key": Value("string")}
    if kind == "sft":
        cols = {"input_ids": ids, "labels": ids, "label_span": List(Value("int8")),
                "loss_weights": List(Value("float32")), **media, "num_tokens": Value("int32"),
                "num_label_tokens": Value("int32"), "num_vision_tokens": Value("int32"),
                "reasoning_chars": Value("int32"), "truncated": Value("bool")}
    else:
        cols = {"prompt_input_ids": ids, "chosen_input_ids": ids, "rejected_input_ids": ids, **media,
                "num_tokens": Value("int32"), "num_vision_tokens": Value("int32")}
    return Features({**cols, **origin})


class SampleWriters:
    """Streams samples into one staged Arrow file per kind."""

    def __init__(self, stage: Path):
        self.stage = stage
        self._writers: dict = {}
        self.counts = Counter()

    def write(self, kind: str, sample: dict) -> None:
        if kind not in self._writers:
            from datasets.arrow_writer import ArrowWriter
            self._writers[kind] = ArrowWriter(features=_features(kind), path=str(self.stage / f"{kind}.arrow"))
        self._writers[kind].write(sample)
        self.counts[kind] += 1

    def finish(self) -> dict:
        """kind -> memory-mapped staged Dataset (SFT always present, possibly empty)."""
        from datasets import Dataset
        if "sft" not in self._writers and "dpo" not in self._writers:
            self.write_empty("sft")
        out = {}
        for kind, writer in self._writers.items():
            writer.finalize()
            out[kind] = Dataset.from_file(str(self.stage / f"{kind}.arrow"))
        return out

    def write_empty(self, kind: str) -> None:
        from datasets.arrow_writer import ArrowWriter
        self._writers[kind] = ArrowWriter(features=_features(kind), path=str(self.stage / f"{kind}.arrow"))


# ---- fingerprint and cache ---------------------------------------------------------------
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
    """Hash of everything in a checkpoint folder but the weights (tokenizer, template, processor)."""
    files = [p for p in sorted(model_dir.iterdir()) if p.is_file() and p.suffix not in _WEIGHT_SUFFIXES]
    return _source_hash(files)


def _file_stats(files: list[Path]) -> list:
    out = []
    for f in files:
        for p in ([f] if f.is_file() else sorted(q for q in f.rglob("*") if q.is_file())):
            st = p.stat()
            out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _cached_report(out: Path, fingerprint: str) -> dict | None:
    try:
        report = json.loads((out / REPORT).read_text())
        cache = json.loads((out / CACHE).read_text())
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


# ---- the build ---------------------------------------------------------------------------
def build(config: BuildConfig, *, log=None, progress: bool = False) -> dict:
    """Build OUT from the input; returns the report (also written to OUT/report.json)."""
    from ..models.detect import detect

    log = log or (lambda msg: None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")    # we fork after using the tokenizer
    started = time.perf_counter()
    out = Path(config.out).absolute()
    model_dir = Path(config.model).absolute()
    detected = detect(model_dir)
    files = input_files(config.input)
    workers = config.workers or min(4, os.cpu_count() or 1)
    settings = _settings(config, detected, out)
    model_info = {"path": str(model_dir), "family": detected.family, "checkpoint": detected.checkpoint,
                  "processor_hash": processor_hash(model_dir)}
    fingerprint = hashlib.sha256(json.dumps(
        {"inputs": _file_stats(files), "settings": settings, "model": model_info, "code": code_version()},
        sort_keys=True).encode()).hexdigest()
    if config.reuse and (cached := _cached_report(out, fingerprint)) is not None:
        log(f"input, settings, model and code unchanged: reusing the build in {out} "
            f"(fingerprint {fingerprint[:12]}); {summary_line(cached)}")
        return {**cached, "cached": True}

    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).unlink(missing_ok=True)             # no report = no finished build
    spec = _Spec(str(model_dir), detected.family, config.min_pixels, config.max_pixels,
                 ReaderOptions(config.format, dict(config.columns)),
                 RenderOptions(settings["reasoning"], config.system, config.max_tokens, config.truncate,
                               config.pair_cut),
                 MediaOptions(out / MEDIA_DIR, config.allow_remote, config.max_image_pixels, config.fps,
                              max_frames=config.max_frames), tuple(config.filters), config.max_trace_tokens)
    stage = out / f".staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        counts, reasons, media_index, datasets_ = _process(config, spec, files, workers, stage, progress)
        outputs = publish_outputs(out, stage, datasets_)
        report = make_report(out, config.max_tokens, counts, reasons, datasets_, outputs, settings, model_info,
                             fingerprint, workers, time.perf_counter() - started)
        datasets_.clear()
        write_json_atomic(out / CACHE, {"fingerprint": fingerprint, "media": media_index}, indent=None)
        write_json_atomic(out / REPORT, report)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log(summary_line(report))
    return report


def _settings(config: BuildConfig, detected, out: Path) -> dict:
    """Every BuildConfig field that can change the output (so a new field is in the
    fingerprint by default), with paths resolved and defaults made explicit."""
    settings = {f.name: getattr(config, f.name) for f in fields(config) if f.metadata.get("fingerprint", True)}
    settings.update(
        input=str(Path(config.input).resolve()), out=str(out), columns=dict(sorted(config.columns.items())),
        filters=list(config.filters),
        image_root=str(Path(config.image_root).resolve()) if config.image_root else None,
        reasoning=config.reasoning or detected.reasoning_style)
    return settings


def _process(config, spec, files, workers, stage, progress):
    """Stream every record through the workers; write samples and quarantine rows in order."""
    from tqdm import tqdm

    writers = SampleWriters(stage)
    dedup = Deduplicator(config.keep_duplicates)
    reasons: Counter = Counter()
    aliases: Counter = Counter()
    styles: Counter = Counter()
    media_index: dict = {}
    n_input = 0
    bar = tqdm(desc="data build", unit=" records", disable=not progress)
    chunks = _chunks(files, config.image_root, config.num_shards, config.shard_index)
    with open(stage / QUARANTINE, "w", encoding="utf-8") as qfile, \
            closing(_results(spec, chunks, workers)) as results:
        for (_, items), outcomes, touched in results:
            media_index.update(touched)
            for (origin, raw, _, position), (kind, payload, key, applied, style) in zip(items, outcomes):
                n_input += 1
                if applied:
                    aliases[applied] += 1
                if style:
                    styles[style] += 1
                if kind != "bad":
                    payload.update(record_index=position, content_key=key.hex())
                    if (first := dedup.first_copy(payload["content_key"], origin.where())) is not None:
                        kind, payload = "bad", ("duplicate", duplicate_message(first), None)
                if kind == "bad":
                    code, message, field_ = payload
                    if config.strict:
                        raise _strict_error(origin, code, message, field_)
                    reasons[code] += 1
                    row = quarantine_row(origin, code, message, raw, field_, record_index=position,
                                         content_key=key.hex() if code == "duplicate" else None,
                                         read_as=style if code != "duplicate" else None)
                    qfile.write(json.dumps(row, ensure_ascii=False) + "\n")
                else:
                    writers.write(kind, payload)
            bar.update(len(items))
    bar.close()
    media_index = {p: (list(s) if s else None) for p, s in sorted(media_index.items())}
    counts = {"input": n_input, "sft": writers.counts["sft"], "dpo": writers.counts["dpo"],
              "duplicates_kept": dedup.kept, "aliases": dict(sorted(aliases.items())),
              "read_as": dict(sorted(styles.items()))}
    return counts, reasons, media_index, writers.finish()


class Deduplicator:
    """Remembers where each content key was first kept; `first_copy` names it for a later
    copy (to quarantine), or None for a first copy, or for every copy with `keep` (counted)."""

    def __init__(self, keep: bool):
        self.keep, self.kept = keep, 0
        self.seen: dict[str, str] = {}

    def first_copy(self, key: str, where: str) -> str | None:
        if key not in self.seen:
            self.seen[key] = where
            return None
        if self.keep:
            self.kept += 1
            return None
        return self.seen[key]


def duplicate_message(first: str) -> str:
    return f"an exact duplicate of {first} (same text and media bytes; --keep-duplicates keeps it)"


def _strict_error(origin: Origin, code: str, message: str, field_: str | None) -> UserError:
    where = f"record {origin.index}: " if origin.index is not None else ""
    return UserError(f"{where}{code}: {message} (--strict stops at the first bad record; without it "
                     "bad records go to quarantine.jsonl)", path=origin.source, line=origin.line, key=field_)


def publish_outputs(out: Path, stage: Path, staged: dict) -> dict:
    """Move the staged outputs into place; drop outputs a previous build left that this one lacks."""
    import datasets

    outputs = {"dataset": None, "preference": None}
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for kind, name, key in (("sft", SFT_DIR, "dataset"), ("dpo", DPO_DIR, "preference")):
            if kind in staged:
                with atomic_dir(out / name) as tmp:
                    staged[kind].save_to_disk(str(tmp))
                outputs[key] = str(out / name)
            else:
                shutil.rmtree(out / name, ignore_errors=True)
    finally:
        if bars:
            datasets.enable_progress_bars()
    os.replace(stage / QUARANTINE, out / QUARANTINE)
    outputs["quarantine"] = str(out / QUARANTINE)
    outputs["media"] = str(out / MEDIA_DIR) if (out / MEDIA_DIR).is_dir() else None
    return outputs


def make_report(out, max_tokens, counts, reasons, staged, outputs, settings, model_info, fingerprint, workers,
                seconds) -> dict:
    """The report of a build (or a merge) from its counts and its staged datasets."""
    from .report import length_histogram, preference_stats, sft_stats

    kept = counts["sft"] + counts["dpo"]
    truncated = int(sum(staged["sft"].data.column("truncated").to_pylist())) if "sft" in staged else 0
    quarantined = sum(reasons.values())
    if counts["input"] != kept + quarantined:     # a bug, never a user error
        raise AssertionError(f"record accounting broke: {counts} vs {quarantined} quarantined")
    stats, lengths = {}, {}
    if "sft" in staged:
        stats["sft"] = sft_stats(staged["sft"])
        lengths["sft"] = staged["sft"].data.column("num_tokens").to_numpy()
    if "dpo" in staged:
        stats["preference"] = preference_stats(staged["dpo"])
        lengths["preference"] = staged["dpo"].data.column("num_tokens").to_numpy()
    length_histogram(out / HISTOGRAM, lengths, max_tokens=max_tokens)
    outputs["histogram"] = str(out / HISTOGRAM)
    return {
        "input_records": counts["input"], "kept": kept, "quarantined": quarantined,
        "invariant": "input_records == kept + quarantined",
        "kept_sft": counts["sft"], "kept_preference": counts["dpo"],
        "quarantine_reasons": dict(sorted(reasons.items())),
        "truncated": truncated, "duplicates_kept": counts["duplicates_kept"],
        "field_aliases": counts["aliases"], "reasoning_read_as": counts["read_as"],
        "stats": stats,
        "seconds": round(seconds, 3),
        "records_per_second": round(counts["input"] / seconds, 1) if seconds > 0 else None,
        "samples_per_second": round(kept / seconds, 1) if seconds > 0 else None,
        "workers": workers, "settings": settings, "model": model_info, "code_version": code_version(),
        "fingerprint": fingerprint, "outputs": outputs, "cached": False,
    }


def summary_line(report: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in report["quarantine_reasons"].items())
    line = (f"{report['input_records']} input records = {report['kept']} kept + "
            f"{report['quarantined']} quarantined")
    if reasons:
        line += f" ({reasons})"
    if report.get("truncated"):
        line += f"; {report['truncated']} truncated"
    if report.get("reasoning_read_as"):
        line += "; replies read as " + ", ".join(f"{k} {v}" for k, v in report["reasoning_read_as"].items())
    if report.get("field_aliases"):
        line += "; fields read as " + "; ".join(f"{k} ({v})" for k, v in report["field_aliases"].items())
    return line + f"; {report['records_per_second']} records/s"
