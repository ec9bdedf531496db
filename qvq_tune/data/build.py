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
    dataset/          sft samples, `datasets.load_from_disk` (memory-mapped Arrow)
    preference/       preference pairs, when the input holds them (data kinds: `kinds.py`)
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

This module keeps the flow; the settings are `build_config.BuildConfig`, the fingerprint
and its cache check `fingerprint.py`, the staged datasets, their publication and the
report `writers.py` (shared with `data/merge.py`).
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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..paths import write_json_atomic
from .build_config import BuildConfig
from .files import input_files, iter_file
from .kinds import KINDS, PREFERENCE, SFT
from .fingerprint import cached_report, processor_hash
from .fingerprint import fingerprint as build_fingerprint
from .media import MediaOptions, MediaResolver
from .messages import Conversation, Origin, Turn, read_as
from .provenance import SourceTally, reasoning_scripts
from .quarantine import QuarantineWriter, RecordError, quarantine_row
from .readers import ReaderOptions, parse
from .render import RenderError, RenderOptions, SampleRenderer
from .trace_filters import DEFAULT_MAX_TRACE_TOKENS, check_replies
from .writers import CACHE, MEDIA_DIR, QUARANTINE, REPORT, SampleWriters, make_report, publish_outputs, summary_line

CHUNK = 64                   # records per task sent to a worker


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
        """(data kind name, sample, content key, aliases, read as, facts) or ("bad", (code, message,
        field), None, aliases, read as, facts); `aliases` is the field mapping `readers.parse`
        applied ("" for none), `read as` how its replies' reasoning was read (None when it did not
        parse), `facts` its record format and its reasoning's letters per script (provenance)."""
        if error is not None:
            return "bad", error, None, "", None, (None, {})
        example = None
        try:
            example = parse(raw, origin, self.reader)
            check_replies(example, self.filters, self.count_tokens, self.max_trace_tokens)
            media = [self.resolver.resolve(m, root) for m in example.media]
            if isinstance(example, Conversation):
                kind, sample = SFT.name, self.renderer.render(example, media)
            else:
                kind, sample = PREFERENCE.name, self.renderer.render_pair(example, media)
        except RecordError as exc:
            return ("bad", (exc.code, exc.message, exc.field), None, aliases_text(example), _read_as(example),
                    _facts(example))
        except RenderError as exc:
            return "bad", (exc.code, str(exc), None), None, aliases_text(example), _read_as(example), _facts(example)
        record_id = example.meta.get("id")
        sample.update(id=str(record_id) if record_id is not None else origin.where(),
                      source=origin.source, line=origin.line, index=origin.index)
        return kind, sample, content_key(example, media), aliases_text(example), read_as(example), _facts(example)

    def count_tokens(self, text: str) -> int:
        return len(self.renderer.tokenizer(text, add_special_tokens=False)["input_ids"])


def _facts(example) -> tuple[str | None, dict]:
    """(record format, reasoning letters per script) of a parsed record, for its file's provenance."""
    if example is None:
        return None, {}
    return example.meta.get("format"), reasoning_scripts(example)


def _read_as(example) -> str | None:
    return read_as(example) if example is not None else None


def aliases_text(example) -> str:
    """The field aliases a parsed record was read with, as the report lists them."""
    aliases = example.meta.get("aliases") if example is not None else None
    return ", ".join(f"{k}={v}" for k, v in sorted(aliases.items())) if aliases else ""


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
    """Hash of the canonical record: roles, texts, reasoning, tool calls, loss weights, the tool
    list, media kinds and bytes."""
    def turn(t: Turn) -> list:
        return [t.role, t.reasoning, [[p.kind, p.text] for p in t.parts], t.loss_weight,
                *([[[c.name, c.arguments] for c in t.tool_calls]] if t.tool_calls else [])]
    if isinstance(example, Conversation):
        body = {"turns": [turn(t) for t in example.turns], **({"tools": example.tools} if example.tools else {})}
    else:
        body = {"prompt": [turn(t) for t in example.prompt], "chosen": turn(example.chosen),
                "rejected": turn(example.rejected)}
    body["media"] = [[m.kind, m.meta.get("sha256")] for m in media]
    return hashlib.sha256(json.dumps(body, ensure_ascii=False).encode()).digest()[:16]


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
    fingerprint = build_fingerprint(files, settings, model_info)
    if config.reuse and (cached := cached_report(out / REPORT, out / CACHE, fingerprint)) is not None:
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
        tally = SourceTally.for_inputs(files, config.input, config.data_license)
        counts, reasons, media_index, datasets_ = _process(config, spec, files, workers, stage, progress, tally)
        outputs = publish_outputs(out, stage, datasets_)
        report = make_report(out, config.max_tokens, counts, reasons, datasets_, outputs, settings, model_info,
                             fingerprint, workers, time.perf_counter() - started, sources=tally.finish())
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


def _process(config, spec, files, workers, stage, progress, tally: SourceTally):
    """Stream every record through the workers; write samples and quarantine rows in order."""
    from tqdm import tqdm

    writers = SampleWriters(stage)
    dedup = Deduplicator(config.keep_duplicates)
    aliases: Counter = Counter()
    styles: Counter = Counter()
    media_index: dict = {}
    n_input = 0
    bar = tqdm(desc="data build", unit=" records", disable=not progress)
    chunks = _chunks(files, config.image_root, config.num_shards, config.shard_index)
    with QuarantineWriter(stage / QUARANTINE) as quarantine, closing(_results(spec, chunks, workers)) as results:
        for (_, items), outcomes, touched in results:
            media_index.update(touched)
            for (origin, raw, _, position), (kind, payload, key, applied, style, facts) in zip(items, outcomes):
                n_input += 1
                tally.read(origin.source, *facts)
                if style:
                    styles[style] += 1
                if applied:
                    aliases[applied] += 1
                if kind != "bad":
                    payload.update(record_index=position, content_key=key.hex())
                    if (first := dedup.first_copy(payload["content_key"], origin.where())) is not None:
                        kind, payload = "bad", ("duplicate", duplicate_message(first), None)
                if kind == "bad":
                    code, message, field_ = payload
                    if config.strict:
                        raise _strict_error(origin, code, message, field_)
                    quarantine.write(quarantine_row(origin, code, message, raw, field_, record_index=position,
                                                    content_key=key.hex() if code == "duplicate" else None,
                                                    read_as=style if code != "duplicate" else None))
                    tally.quarantined(origin.source, code)
                else:
                    writers.write(kind, payload)
                    tally.kept(origin.source, kind, payload)
            bar.update(len(items))
    bar.close()
    media_index = {p: (list(s) if s else None) for p, s in sorted(media_index.items())}
    counts = {"input": n_input, **{kind: writers.counts[kind] for kind in KINDS},
              "duplicates_kept": dedup.kept, "aliases": dict(sorted(aliases.items())),
              "read_as": dict(sorted(styles.items()))}
    return counts, quarantine.counts, media_index, writers.finish()


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
