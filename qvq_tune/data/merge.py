"""`qvq-tune data merge`: join the shards of a sharded build into the build it stands for.

Shards are the outputs of `data build --num-shards N --shard-index I` over one input
with one set of settings, built anywhere (a Slurm array, Ray or Kubernetes jobs). The
merge checks that they belong together (the same settings but the index, the same model
and processor, this code version, every index 0 .. N-1 once), then writes OUT as the
unsharded build would have: samples and quarantine rows in input order (they carry their
`record_index`), a record duplicated across shards quarantined after its first copy
(unless the build kept duplicates; its quarantine row gets the record back from the
input), duplicate messages naming the first copy in the whole input, the shards' media
copied into OUT/media (content-addressed, so copies coincide) with the samples' paths
rewritten, statistics recomputed, and a report whose counts equal the shards' sums.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..paths import write_json_atomic
from .build import Deduplicator, duplicate_message
from .fingerprint import code_version
from .files import iter_raw
from .kinds import KINDS
from .messages import Origin
from .provenance import SourceTally
from .quarantine import QuarantineWriter, RecordError, excerpt, quarantine_row
from .writers import (CACHE, MEDIA_DIR, QUARANTINE, REPORT, SampleWriters, make_report,
                      publish_outputs, summary_line)

# Settings that may differ between the shards of one build.
PER_SHARD = ("shard_index", "out")


@dataclass
class Shard:
    path: Path
    report: dict

    @property
    def index(self) -> int:
        return self.report["settings"]["shard_index"]

    @property
    def media_prefix(self) -> str:
        """How the shard's samples spell paths into its media folder (the folder it was built in)."""
        return os.path.join(self.report["settings"]["out"], MEDIA_DIR) + os.sep

    @classmethod
    def open(cls, path: str | Path) -> "Shard":
        path = Path(path).absolute()
        try:
            report = json.loads((path / REPORT).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError("not a finished build (no report.json); build this shard first",
                            path=str(path)) from None
        except json.JSONDecodeError:
            raise UserError("report.json is not valid JSON; rebuild this shard", path=str(path)) from None
        return cls(path, report)

    def rows(self, shard_no: int) -> Iterator[tuple]:
        """(record_index, shard no, data kind name | "bad", row) in input order."""
        from datasets import load_from_disk

        def tagged(kind: str, rows) -> Iterator[tuple]:
            return ((row["record_index"], shard_no, kind, row) for row in rows)
        streams = [tagged(kind.name, load_from_disk(str(self.path / kind.folder)))
                   for kind in KINDS.values() if (self.path / kind.folder).is_dir()]
        streams.append(tagged("bad", self._quarantine()))
        return heapq.merge(*streams, key=lambda t: t[0])

    def _quarantine(self) -> Iterator[dict]:
        with open(self.path / QUARANTINE, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                row = json.loads(line)
                if row.get("record_index") is None:
                    raise UserError(f"quarantine row {n} has no record_index (built by an older qvq-tune); "
                                    "rebuild the shards", path=str(self.path / QUARANTINE))
                yield row


def check_shards(shards: list[Shard], out: Path) -> dict:
    """The settings the shards share; a UserError naming the shard that does not fit."""
    if not shards:
        raise UserError("give the shard folders to merge", key="shards")
    first = shards[0]
    common = {k: v for k, v in first.report["settings"].items() if k not in PER_SHARD}
    for shard in shards:
        if shard.path == out:
            raise UserError("--out is one of the shards; merge into a new folder", path=str(out))
        settings = shard.report["settings"]
        for key in sorted(set(common) | set(settings) - set(PER_SHARD)):
            if settings.get(key) != common.get(key):
                raise UserError(f"built with {key}={settings.get(key)!r} but {first.path} with "
                                f"{common.get(key)!r}; shards of one build share every setting but "
                                "--shard-index", path=str(shard.path), key=key)
        if shard.report["model"] != first.report["model"]:
            raise UserError(f"built with another model or processor than {first.path}", path=str(shard.path),
                            key="model")
        if shard.report["code_version"] != code_version():
            raise UserError(f"built by qvq-tune {shard.report['code_version']}, this is {code_version()}; "
                            "rebuild the shards with this version", path=str(shard.path))
    indices = Counter(s.index for s in shards)
    n = common["num_shards"]
    missing = [i for i in range(n) if i not in indices]
    twice = sorted(i for i, c in indices.items() if c > 1)
    if missing or twice:
        raise UserError(f"a build of --num-shards {n} needs each --shard-index 0..{n - 1} once; "
                        + (f"missing {missing}" if missing else f"given twice: {twice}"), key="shards")
    return common


def merge(shard_dirs: list[str], out: str | Path, *, log=None) -> dict:
    """Join the shards into OUT; returns the report (also written to OUT/report.json)."""
    log = log or (lambda msg: None)
    started = time.perf_counter()
    out = Path(out).absolute()
    shards = sorted((Shard.open(d) for d in shard_dirs), key=lambda s: s.index)
    settings = check_shards(shards, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).unlink(missing_ok=True)             # no report = no finished build
    (out / CACHE).unlink(missing_ok=True)              # a merge is never reused as a build
    stage = out / f".staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        _copy_media(shards, out / MEDIA_DIR)
        tally = SourceTally.from_shards([s.report["provenance"] for s in shards])
        counts, reasons, datasets_ = _join(shards, settings, out, stage, log, tally)
        outputs = publish_outputs(out, stage, datasets_)
        counts["aliases"] = dict(sorted(sum((Counter(s.report["field_aliases"]) for s in shards), Counter()).items()))
        read_as = sum((Counter(s.report["reasoning_read_as"]) for s in shards), Counter())
        counts["read_as"] = dict(sorted(read_as.items()))
        fingerprint = hashlib.sha256(json.dumps([s.report["fingerprint"] for s in shards]).encode()).hexdigest()
        report = make_report(out, settings["max_tokens"], counts, reasons, datasets_, outputs,
                             {**settings, "out": str(out), "shard_index": None}, shards[0].report["model"],
                             fingerprint, None, sum(s.report["seconds"] for s in shards), sources=tally.finish())
        datasets_.clear()
        report.update(merged_from=[str(s.path) for s in shards],
                      merge_seconds=round(time.perf_counter() - started, 3))
        if report["input_records"] != sum(s.report["input_records"] for s in shards):    # a bug, never a user error
            raise AssertionError("the merge lost or invented records")
        write_json_atomic(out / REPORT, report)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log(summary_line(report))
    return report


def _join(shards: list[Shard], settings: dict, out: Path, stage: Path, log, tally: SourceTally):
    """Every shard's rows in input order into staged datasets and one quarantine file."""
    writers = SampleWriters(stage)
    dedup = Deduplicator(settings["keep_duplicates"])
    refetch: dict[int, int] = {}               # record_index -> its line in the quarantine file
    n_input = 0
    media = os.path.join(str(out), MEDIA_DIR) + os.sep
    with QuarantineWriter(stage / QUARANTINE) as quarantine:
        for position, shard_no, kind, row in heapq.merge(*(s.rows(i) for i, s in enumerate(shards)),
                                                          key=lambda t: t[0]):
            n_input += 1
            if kind == "bad":
                key = row.get("content_key")
                if row["reason"] == "duplicate" and key in dedup.seen:
                    row["message"] = duplicate_message(dedup.seen[key])
            else:
                origin = Origin(row["source"], row["line"], row["index"])
                first = dedup.first_copy(row["content_key"], origin.where())
                if first is None:
                    writers.write(kind, _rebase(row, shards[shard_no].media_prefix, media))
                    continue
                refetch[position] = quarantine.total
                tally.unkeep(row["source"], kind, row, "duplicate")
                row = quarantine_row(origin, "duplicate", duplicate_message(first), None,
                                     record_index=position, content_key=row["content_key"])
            quarantine.write(row)
    if refetch:
        _restore_records(stage / QUARANTINE, refetch, settings["input"], log)
    counts = {"input": n_input, **{kind: writers.counts[kind] for kind in KINDS}, "duplicates_kept": dedup.kept}
    return counts, quarantine.counts, writers.finish()


def _rebase(row: dict, old: str, new: str) -> dict:
    """A sample with its paths into the shard's media folder moved to OUT's."""
    for key in ("images", "videos"):
        row[key] = [new + p[len(old):] if p.startswith(old) else p for p in row[key] or []]
    return row


def _copy_media(shards: list[Shard], target: Path) -> None:
    """Each shard's content-addressed media into `target` (hard links where possible)."""
    for shard in shards:
        folder = shard.path / MEDIA_DIR
        if not folder.is_dir():
            continue
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(folder.iterdir()):
            dest = target / entry.name
            if entry.name.startswith(".") or dest.exists():
                continue
            if entry.is_dir():
                shutil.copytree(entry, dest, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry, dest)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _restore_records(path: Path, lines: dict[int, int], input_path: str, log) -> None:
    """Put the original record into the quarantine rows of cross-shard duplicates (the
    shard that kept it kept a sample, not the record), reading it back from the input."""
    records: dict[int, object] = {}
    try:
        for position, (_, raw) in enumerate(iter_raw(input_path)):
            if position in lines and not isinstance(raw, RecordError):
                records[lines[position]] = raw
                if len(records) == len(lines):
                    break
    except UserError as exc:
        log(f"the input is not readable here ({exc}); {len(lines)} duplicate row(s) keep no record")
        return
    rows = path.read_text(encoding="utf-8").splitlines()
    for n, raw in records.items():
        row = json.loads(rows[n])
        row["record"] = excerpt(raw)
        rows[n] = json.dumps(row, ensure_ascii=False)
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
