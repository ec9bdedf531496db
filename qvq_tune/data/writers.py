"""What a build (or a merge) writes into OUT: staged Arrow datasets, their publication, the report.

`SampleWriters` streams samples into one staged Arrow file per data kind (`data/kinds.py`);
`publish_outputs` moves them into place (each kind's folder, `quarantine.jsonl`); `make_report`
counts, checks `input_records == kept + quarantined`, computes statistics and the length
histogram; `summary_line` is the one line a build or a merge prints.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

from ..paths import atomic_dir
from .fingerprint import code_version
from .kinds import KINDS, PREFERENCE, SFT

REPORT, CACHE, QUARANTINE, HISTOGRAM = "report.json", "cache.json", "quarantine.jsonl", "lengths.png"
MEDIA_DIR = "media"


def _features(kind: str):
    from datasets import Features, List, Value
    ids, paths, grids = List(Value("int32")), List(Value("string")), List(List(Value("int32")))
    media = {"images": paths, "image_grid_thw": grids, "videos": paths, "video_grid_thw": grids}
    origin = {"id": Value("string"), "source": Value("string"), "line": Value("int64"),
              "index": Value("int64"), "record_index": Value("int64"), "content_key": Value("string")}
    if kind == SFT.name:
        cols = {"input_ids": ids, "labels": ids, "label_span": List(Value("int8")),
                "loss_weights": List(Value("float32")), **media, "num_tokens": Value("int32"),
                "num_label_tokens": Value("int32"), "num_vision_tokens": Value("int32"),
                "reasoning_chars": Value("int32"), "truncated": Value("bool")}
    elif kind == PREFERENCE.name:
        cols = {"prompt_input_ids": ids, "chosen_input_ids": ids, "rejected_input_ids": ids, **media,
                "num_tokens": Value("int32"), "num_vision_tokens": Value("int32")}
    else:
        raise KeyError(f"no columns for data kind {kind!r}")
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
        """kind name -> memory-mapped staged Dataset (sft present, possibly empty, when nothing was kept)."""
        from datasets import Dataset
        if not self._writers:
            self.write_empty(SFT.name)
        out = {}
        for kind, writer in self._writers.items():
            writer.finalize()
            out[kind] = Dataset.from_file(str(self.stage / f"{kind}.arrow"))
        return out

    def write_empty(self, kind: str) -> None:
        from datasets.arrow_writer import ArrowWriter
        self._writers[kind] = ArrowWriter(features=_features(kind), path=str(self.stage / f"{kind}.arrow"))


def publish_outputs(out: Path, stage: Path, staged: dict) -> dict:
    """Move the staged outputs into place; drop outputs a previous build left that this one lacks."""
    import datasets

    outputs = {kind.folder: None for kind in KINDS.values()}
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for kind in KINDS.values():
            if kind.name in staged:
                with atomic_dir(out / kind.folder) as tmp:
                    staged[kind.name].save_to_disk(str(tmp))
                outputs[kind.folder] = str(out / kind.folder)
            else:
                shutil.rmtree(out / kind.folder, ignore_errors=True)
    finally:
        if bars:
            datasets.enable_progress_bars()
    os.replace(stage / QUARANTINE, out / QUARANTINE)
    outputs["quarantine"] = str(out / QUARANTINE)
    outputs["media"] = str(out / MEDIA_DIR) if (out / MEDIA_DIR).is_dir() else None
    return outputs


def make_report(out, max_tokens, counts, reasons, staged, outputs, settings, model_info, fingerprint, workers,
                seconds, *, sources: list[dict]) -> dict:
    """The report of a build (or a merge) from its counts, its staged datasets and its
    per-file provenance (`provenance.SourceTally`)."""
    from .provenance import provenance
    from .report import length_histogram, preference_stats, sft_stats

    kept = sum(counts[kind] for kind in KINDS)
    truncated = int(sum(staged["sft"].data.column("truncated").to_pylist())) if "sft" in staged else 0
    quarantined = sum(reasons.values())
    if counts["input"] != kept + quarantined:     # a bug, never a user error
        raise AssertionError(f"record accounting broke: {counts} vs {quarantined} quarantined")
    if sum(e["records"] for e in sources) != counts["input"] or sum(e["kept"] for e in sources) != kept:
        raise AssertionError(f"per-file provenance broke: {counts} vs {sources}")
    stats, lengths = {}, {}
    if "sft" in staged:
        stats["sft"] = sft_stats(staged["sft"])
        lengths["sft"] = staged["sft"].data.column("num_tokens").to_numpy()
    if "preference" in staged:
        stats["preference"] = preference_stats(staged["preference"])
        lengths["preference"] = staged["preference"].data.column("num_tokens").to_numpy()
    length_histogram(out / HISTOGRAM, lengths, max_tokens=max_tokens)
    outputs["histogram"] = str(out / HISTOGRAM)
    return {
        "input_records": counts["input"], "kept": kept, "quarantined": quarantined,
        "invariant": "input_records == kept + quarantined",
        **{f"kept_{kind}": counts[kind] for kind in KINDS},
        "quarantine_reasons": dict(sorted(reasons.items())),
        "truncated": truncated, "duplicates_kept": counts["duplicates_kept"],
        "field_aliases": counts["aliases"], "reasoning_read_as": counts["read_as"],
        "stats": stats,
        "seconds": round(seconds, 3),
        "records_per_second": round(counts["input"] / seconds, 1) if seconds > 0 else None,
        "samples_per_second": round(kept / seconds, 1) if seconds > 0 else None,
        "workers": workers, "settings": settings, "model": model_info, "code_version": code_version(),
        "fingerprint": fingerprint, "outputs": outputs, "cached": False,
        "provenance": provenance(settings, sources, reasons, truncated, counts["duplicates_kept"]),
    }


def summary_line(report: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in report["quarantine_reasons"].items())
    line = (f"{report['input_records']} input records = {report['kept']} kept + "
            f"{report['quarantined']} quarantined")
    if reasons:
        line += f" ({reasons})"
    if report.get("truncated"):
        line += f"; {report['truncated']} truncated"
    if report.get("field_aliases"):
        line += "; fields read as " + "; ".join(f"{k} ({v})" for k, v in report["field_aliases"].items())
    if report.get("reasoning_read_as"):
        line += "; replies read as " + ", ".join(f"{k} {v}" for k, v in report["reasoning_read_as"].items())
    return line + f"; {report['records_per_second']} records/s"
