"""User files -> raw records, streamed, each with its origin (file and line or index).

Supported inputs: `.jsonl` (read line by line; 1-based line numbers), `.json` (an array
of records, or one record; parsed whole since JSON has no streaming form, so prefer
JSONL for large data), `.parquet` (record batches), `.arrow` (IPC stream or file,
memory-mapped) and Hugging Face `datasets` folders written by `save_to_disk` (a
`Dataset`, or a `DatasetDict` whose splits are read in order). A folder that is not a
datasets folder is searched recursively for all of these, in sorted order; hidden
entries are skipped. Image columns come back raw (HF `Image` features as
`{"bytes", "path"}` dicts), never decoded.

A line that is not valid JSON is yielded as a `RecordError("malformed_json")` in place
of its record, so every input record is accounted for downstream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from .messages import Origin
from .quarantine import RecordError

SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
BATCH_ROWS = 256

Raw = dict | RecordError


def is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file()
                              or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()))


def input_files(path: str | Path) -> list[Path]:
    """The files (and datasets folders) an input path stands for, in a stable order."""
    p = Path(path)
    if not p.exists():
        raise UserError("input does not exist", path=str(p))
    if p.is_file():
        if p.suffix.lower() not in SUFFIXES:
            raise UserError(f"unsupported input type {p.suffix!r}; expected one of {', '.join(SUFFIXES)} "
                            "or a Hugging Face datasets folder", path=str(p))
        return [p]
    if is_hf_dataset_dir(p):
        return [p]
    found = _walk(p)
    if not found:
        raise UserError(f"no {'/'.join(SUFFIXES)} files or datasets folders in this folder", path=str(p))
    return found


def _walk(folder: Path) -> list[Path]:
    found: list[Path] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found += [entry] if is_hf_dataset_dir(entry) else _walk(entry)
        elif entry.suffix.lower() in SUFFIXES:
            found.append(entry)
    return found


def iter_raw(path: str | Path) -> Iterator[tuple[Origin, Raw]]:
    """(origin, record) for every record under `path`; bad JSON as (origin, RecordError)."""
    for f in input_files(path):
        yield from iter_file(f)


def iter_file(f: Path) -> Iterator[tuple[Origin, Raw]]:
    if f.is_dir():
        return _iter_hf_dir(f)
    suffix = f.suffix.lower()
    if suffix == ".jsonl":
        return _iter_jsonl(f)
    if suffix == ".json":
        return _iter_json(f)
    if suffix == ".parquet":
        return _iter_parquet(f)
    if suffix == ".arrow":
        return _iter_arrow(f)
    raise UserError(f"unsupported input type {suffix!r}", path=str(f))


def malformed(message: str, raw: str) -> RecordError:
    """A `malformed_json` error carrying the offending text (`.record`) for the quarantine."""
    err = RecordError("malformed_json", message)
    err.record = raw
    return err


def _iter_jsonl(f: Path) -> Iterator[tuple[Origin, Raw]]:
    source = str(f)
    with open(f, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if n == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            origin = Origin(source, line=n)
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield origin, malformed(f"line {n} is not UTF-8 (byte {exc.start})",
                                        line.decode("utf-8", "replace").rstrip("\n"))
                continue
            try:
                yield origin, json.loads(text)
            except json.JSONDecodeError as exc:
                yield origin, malformed(f"line {n}, column {exc.colno}: {exc.msg}", text.rstrip("\n"))


def _iter_json(f: Path) -> Iterator[tuple[Origin, Raw]]:
    source = str(f)
    try:
        text = f.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        yield Origin(source, line=1), malformed(f"the file is not UTF-8 (byte {exc.start})", "")
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":        # JSON Lines saved as .json
            yield from _iter_jsonl(f)
            return
        lines = text.splitlines()
        bad = lines[exc.lineno - 1] if 0 < exc.lineno <= len(lines) else ""
        yield Origin(source, line=exc.lineno), malformed(
            f"line {exc.lineno}, column {exc.colno}: {exc.msg} (the whole file is one JSON document, "
            "so none of its records can be read)", bad)
        return
    if isinstance(data, list):
        for i, record in enumerate(data):
            yield Origin(source, index=i), record
    else:
        yield Origin(source, index=0), data


def _rows(batches, source: str) -> Iterator[tuple[Origin, Raw]]:
    i = 0
    for batch in batches:
        for record in batch.to_pylist():
            yield Origin(source, index=i), record
            i += 1


def _iter_parquet(f: Path) -> Iterator[tuple[Origin, Raw]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(f, memory_map=True)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"not a readable parquet file ({exc})", path=str(f)) from None
    yield from _rows(pf.iter_batches(batch_size=BATCH_ROWS), str(f))


def _iter_arrow(f: Path) -> Iterator[tuple[Origin, Raw]]:
    import pyarrow as pa
    source = pa.memory_map(str(f))
    try:
        reader = pa.ipc.open_stream(source)             # what `datasets` writes
    except pa.ArrowInvalid:
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid as exc:
            raise UserError(f"not a readable Arrow file ({exc})", path=str(f)) from None
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(reader)
    yield from _rows(batches, str(f))


def _iter_hf_dir(folder: Path) -> Iterator[tuple[Origin, Raw]]:
    import datasets
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UserError(f"not a readable datasets folder ({exc})", path=str(folder)) from None
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    for split, ds in splits:
        source = str(folder / split) if split is not None else str(folder)
        # The arrow format hands back raw storage: image columns stay {"bytes", "path"}.
        yield from _rows(ds.with_format("arrow").iter(batch_size=BATCH_ROWS), source)
