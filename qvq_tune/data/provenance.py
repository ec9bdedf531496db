"""Where a build's records came from: the `provenance` part of `report.json`, per input file.

For every input file (or datasets folder) the build records its name relative to the
input (never an absolute path), its sha256, the file type and the record formats the
readers detected, records in / kept / quarantined by reason, the kept samples' media,
tokens and vision tokens (image and video apart), the scripts its replies' reasoning is
written in (letters per script and their shares), whether it is synthetic, and its
licence: `--data-license` (an SPDX id or free text), else the `license:` of the nearest
dataset card (a README.md with front matter, read with `huggingface_hub.DatasetCard`)
from the file's folder up to the input folder. A card tagged `synthetic`, or whose
`language_creators` say `machine-generated`, marks the data synthetic (`qvq-tune synth`
writes such a card). `filters` lists what the build removed or changed, with counts.

A build tallies each record as it is written (`SourceTally.kept` / `.quarantined`); a
merge adds the shards' tallies (`SourceTally.from_shards`) and moves the records it
finds duplicated across shards from kept to quarantined (`SourceTally.unkeep`), so a
merged build's provenance equals the unsharded build's. Each entry's `origin` (the
file as the build read it) is local: summaries drop it (`summary.py`).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

from .diagnostics import script_counts
from .files import is_hf_dataset_dir
from .kinds import KINDS
from .messages import Conversation, Example
from .trace_filters import FILTERS

VERSION = 1
CARD = "README.md"
HUB_CACHE = re.compile(r"^datasets--([\w.-]+)--([\w.-]+)$")     # huggingface_hub's cache folder name
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
COUNTS = ("records", "kept", *(f"kept_{kind}" for kind in KINDS), "quarantined", "images", "videos", "tokens",
          "vision_tokens", "image_tokens", "video_tokens")


# ---- what a worker learns about one record ----------------------------------------------------
def reasoning_scripts(example: Example | None) -> dict[str, int]:
    """Letters per script in the reasoning of a record's replies (both replies of a pair)."""
    if example is None:
        return {}
    replies = ([t for t in example.turns if t.role == "assistant"] if isinstance(example, Conversation)
               else [example.chosen, example.rejected])
    counts: Counter = Counter()
    for turn in replies:
        if turn.reasoning:
            counts.update(script_counts(turn.reasoning))
    return dict(counts)


# ---- dataset cards, licences, names -------------------------------------------------------------
def read_card(folder: Path) -> dict | None:
    """The front matter of `folder/README.md` when it is a dataset card (has YAML front matter)."""
    path = folder / CARD
    if not path.is_file():
        return None
    from huggingface_hub import DatasetCard
    try:
        card = DatasetCard.load(path, ignore_metadata_errors=True)
    except (ValueError, OSError, UnicodeDecodeError):
        return None
    data = card.data.to_dict() if card.data is not None else {}
    return data or None


def nearest_card(path: Path, root: Path) -> tuple[Path, dict] | None:
    """The dataset card nearest above `path` (a file, or a datasets folder: itself first),
    not looking above `root`; (its folder, its front matter) or None."""
    folder = path if path.is_dir() else path.parent
    root = root.resolve()
    folder = folder.resolve()
    while True:
        card = read_card(folder)
        if card is not None:
            return folder, card
        if folder == root or root not in folder.parents:
            return None
        folder = folder.parent


def card_license(card: dict) -> str | None:
    """`license:` of a card (a list joined with " OR "); `other` named by `license_name`."""
    value = card.get("license")
    if isinstance(value, list):
        value = " OR ".join(str(v) for v in value)
    if value == "other" and card.get("license_name"):
        return f"other ({card['license_name']})"
    return str(value) if value else None


def synthetic_reason(card: dict | None) -> str | None:
    """Why a card marks its data synthetic, or None."""
    if not card:
        return None
    tags = [str(t).lower() for t in card.get("tags") or []]
    if "synthetic" in tags:
        return "card tag synthetic"
    creators = [str(c).lower() for c in card.get("language_creators") or []]
    if "machine-generated" in creators:
        return "card language_creators: machine-generated"
    return None


def hub_id(input_path: str | Path, data_name: str | None) -> str | None:
    """The data's Hub id (OWNER/NAME): `--data-name` when it is one, else from the
    `datasets--OWNER--NAME` folder of a Hub cache download the input lies in."""
    if data_name:
        return data_name if HUB_ID.match(data_name) else None
    for part in Path(input_path).resolve().parts:
        if m := HUB_CACHE.match(part):
            return f"{m.group(1)}/{m.group(2)}"
    return None


def file_sha256(path: Path) -> str:
    """sha256 of a file; of a datasets folder, over its files' relative names and bytes."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def file_type(path: Path) -> str:
    return "hf-datasets" if is_hf_dataset_dir(path) else path.suffix.lower().lstrip(".")


def relative_name(path: Path, root: Path) -> str:
    """`path` relative to the input folder (its file name when the input is a file)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix() or path.name
    except ValueError:
        return path.name


# ---- the tally ------------------------------------------------------------------------------------
class SourceTally:
    """Per input file: what the build read, kept and quarantined, in input order."""

    def __init__(self, entries: list[dict], origins: dict[str, dict] | None = None):
        self.entries = entries
        self.origins = origins or {e["origin"]: e for e in entries}    # how records name their file
        self._by_source: dict[str, dict] = {}

    @classmethod
    def for_inputs(cls, files: list[Path], input_path: str | Path, data_license: str | None) -> "SourceTally":
        root = Path(input_path)
        root = root if root.is_dir() and not is_hf_dataset_dir(root) else root.parent
        entries = []
        for f in files:
            found = nearest_card(f, root)
            card = found[1] if found else None
            licence, licence_from = (data_license, "--data-license") if data_license else (None, None)
            if licence is None and card and card_license(card):
                licence, licence_from = card_license(card), f"dataset card {relative_name(found[0] / CARD, root)}"
            entry = {"path": relative_name(f, root), "sha256": file_sha256(f),
                     "bytes": sum(p.stat().st_size for p in ([f] if f.is_file() else f.rglob("*")) if p.is_file()),
                     "file_type": file_type(f), "record_formats": {}, **{k: 0 for k in COUNTS},
                     "quarantine_reasons": {}, "reasoning_script_chars": {}, "reasoning_scripts": {},
                     "synthetic": synthetic_reason(card) is not None, "synthetic_reason": synthetic_reason(card),
                     "license": licence, "license_from": licence_from,
                     "card_license": card_license(card) if card else None,
                     "dataset_card": card is not None, "card_name": (card or {}).get("pretty_name"),
                     "origin": str(f)}
            entries.append(entry)
        return cls(entries)

    @classmethod
    def from_shards(cls, shard_provenances: list[dict]) -> "SourceTally":
        """The shards' tallies added up, file by file (the shards read the same files)."""
        merged: dict[str, dict] = {}
        origins: dict[str, dict] = {}
        for prov in shard_provenances:
            for entry in prov["sources"]:
                into = merged.setdefault(entry["path"], {**entry, **{k: 0 for k in COUNTS}, "record_formats": {},
                                                         "quarantine_reasons": {}, "reasoning_script_chars": {}})
                origins[entry["origin"]] = into
                for key in COUNTS:
                    into[key] += entry[key]
                for key in ("record_formats", "quarantine_reasons", "reasoning_script_chars"):
                    into[key] = dict(Counter(into[key]) + Counter(entry[key]))
        return cls(list(merged.values()), origins)

    def entry(self, origin_source: str) -> dict:
        """The entry of a record's file (a datasets folder's split is read as FOLDER/SPLIT)."""
        if origin_source not in self._by_source:
            for origin, e in self.origins.items():
                if origin_source == origin or origin_source.startswith(origin.rstrip("/") + "/"):
                    self._by_source[origin_source] = e
                    break
            else:
                raise AssertionError(f"a record from {origin_source}, which is not an input file")
        return self._by_source[origin_source]

    def read(self, origin_source: str, record_format: str | None, scripts: dict[str, int]) -> None:
        e = self.entry(origin_source)
        e["records"] += 1
        if record_format:
            e["record_formats"][record_format] = e["record_formats"].get(record_format, 0) + 1
        for script, n in scripts.items():
            e["reasoning_script_chars"][script] = e["reasoning_script_chars"].get(script, 0) + n

    def kept(self, origin_source: str, kind: str, sample: dict, sign: int = 1) -> None:
        e = self.entry(origin_source)
        e["kept"] += sign
        e[f"kept_{kind}"] += sign
        images, videos = sample.get("images") or [], sample.get("videos") or []
        e["images"] += sign * len(images)
        e["videos"] += sign * len(videos)
        e["tokens"] += sign * int(sample.get("num_tokens") or 0)
        vision = int(sample.get("num_vision_tokens") or 0)
        image_cells = sum(_cells(g) for g in sample.get("image_grid_thw") or [])
        all_cells = image_cells + sum(_cells(g) for g in sample.get("video_grid_thw") or [])
        image_tokens = vision * image_cells // all_cells if all_cells else 0
        e["vision_tokens"] += sign * vision
        e["image_tokens"] += sign * image_tokens
        e["video_tokens"] += sign * (vision - image_tokens)

    def quarantined(self, origin_source: str, reason: str) -> None:
        e = self.entry(origin_source)
        e["quarantined"] += 1
        e["quarantine_reasons"][reason] = e["quarantine_reasons"].get(reason, 0) + 1

    def unkeep(self, origin_source: str, kind: str, sample: dict, reason: str) -> None:
        """A kept sample the merge found to repeat an earlier shard's: now quarantined."""
        self.kept(origin_source, kind, sample, sign=-1)
        self.quarantined(origin_source, reason)

    def finish(self) -> list[dict]:
        """The entries, each with its reasoning-script shares and sorted counters."""
        for e in self.entries:
            chars = e["reasoning_script_chars"]
            total = sum(chars.values())
            e["reasoning_script_chars"] = dict(sorted(chars.items(), key=lambda kv: -kv[1]))
            e["reasoning_scripts"] = {s: round(n / total, 4) for s, n in e["reasoning_script_chars"].items()}
            e["quarantine_reasons"] = dict(sorted(e["quarantine_reasons"].items()))
            e["record_formats"] = dict(sorted(e["record_formats"].items()))
        return self.entries


def _cells(grid) -> int:
    t, h, w = grid
    return int(t) * int(h) * int(w)


def filters_applied(settings: dict, reasons: dict, truncated: int, duplicates_kept: int) -> list[dict]:
    """What the build removed or changed beyond bad records, each with its count."""
    out = [{"filter": f"--filter {name}", "reason": FILTERS[name], "removed": reasons.get(FILTERS[name], 0)}
           for name in settings.get("filters") or []]
    if settings.get("max_tokens"):
        out.append({"filter": f"--max-tokens {settings['max_tokens']}", "reason": "too_long",
                    "removed": reasons.get("too_long", 0)})
    if settings.get("truncate"):
        out.append({"filter": "--truncate", "changed": truncated})
    if settings.get("pair_cut") not in (None, "none"):      # every pair cut where its replies first differ
        out.append({"filter": f"--pair-cut {settings['pair_cut']}"})
    if settings.get("keep_duplicates"):
        out.append({"filter": "--keep-duplicates", "kept": duplicates_kept})
    else:
        out.append({"filter": "exact duplicates", "reason": "duplicate", "removed": reasons.get("duplicate", 0)})
    return out


def provenance(settings: dict, entries: list[dict], reasons: dict, truncated: int, duplicates_kept: int) -> dict:
    """The `provenance` part of a build report."""
    return {"version": VERSION, "name": settings.get("data_name"),
            "hub_id": hub_id(settings["input"], settings.get("data_name")),
            "license": settings.get("data_license"), "sources": entries,
            "filters": filters_applied(settings, reasons, truncated, duplicates_kept)}
