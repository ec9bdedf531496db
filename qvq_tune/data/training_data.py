"""The training-data summary a model carries: `training_data.json`, one versioned document.

    {"schema": "qvq-tune/training-data", "version": 1,
     "stages": [                        # in training order: the base's own, then each run
        {"stage": 1, "name", "objective", "method", "base_model", "starts_from", "fingerprint",
         "steps"?, "samples"?, "datasets": [DATASET, ...]}, ...]}

    DATASET = {"role": "train" | "validation", "folder", "name", "hub_id", "build_fingerprint",
               "records", "kept", "quarantined", "quarantine_reasons", "tokens", "vision_tokens",
               "image_tokens", "video_tokens", "images", "videos", "licenses", "synthetic_records",
               "synthetic_share", "reasoning_scripts", "filters", "sources": [SOURCE, ...]}

`dataset_summary` makes a DATASET from a build folder's `report.json` (its `provenance`,
`provenance.py`): counts, never a record's content; `folder` and each SOURCE's `path` are
the only paths, relative (a folder's name, a file's name within the input), and
`redact` drops them. A build made before provenance was recorded gives what its report
knows and says so (`provenance: "not recorded"`); the pairs `qvq-tune data pairs` samples
are synthetic by making, with the build their prompts came from as `prompts`.
`run_folder.py` writes a run's document (its stage after the stages it inherits), the
exports copy it and the CLI prints it; `read` accepts any folder holding one (or with its
record beside it, `beside`) and checks its schema and version.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from pathlib import Path

from ..errors import UserError
from .dataset import build_report
from .kinds import KINDS

SCHEMA, VERSION, FILE = "qvq-tune/training-data", 1, "training_data.json"
PATH_KEYS = ("folder", "path")           # the only keys that hold paths (relative); `redact` drops them
SUMMED = ("records", "kept", "quarantined", "tokens", "vision_tokens", "image_tokens", "video_tokens", "images",
          "videos")
SOURCE_KEYS = ("path", "sha256", "bytes", "file_type", "record_formats", "records", "kept", "quarantined",
               "quarantine_reasons", "images", "videos", "tokens", "vision_tokens", "image_tokens", "video_tokens",
               "reasoning_scripts", "synthetic", "synthetic_reason", "license", "license_from", "dataset_card",
               "card_name")


def dataset_summary(build_dir: str | Path, role: str) -> dict:
    """The summary of one built dataset (the folder a recipe names) for a training-data document."""
    folder = Path(build_dir)
    report = build_report(folder)
    name = folder.parent.name if folder.name in {k.folder for k in KINDS.values()} else folder.name
    if report is None:
        return {"role": role, "folder": name, "provenance": "not recorded (no report.json)"}
    prov = report.get("provenance")
    if prov is None and "pairs" in report:
        return _sampled_pairs(report, role, name)
    if prov is None:
        return {"role": role, "folder": name, "build_fingerprint": report.get("fingerprint"),
                "records": report.get("input_records"), "kept": report.get("kept"),
                "quarantined": report.get("quarantined"), "quarantine_reasons": report.get("quarantine_reasons"),
                "provenance": "not recorded (built by an older qvq-tune; rebuild to record it)"}
    sources = [{k: e.get(k) for k in SOURCE_KEYS} for e in prov["sources"]]
    out = {"role": role, "folder": name, "name": prov["name"] or prov["hub_id"], "hub_id": prov["hub_id"],
           "build_fingerprint": report["fingerprint"]}
    out.update({k: sum(s[k] for s in sources) for k in SUMMED})
    out["quarantine_reasons"] = dict(sorted(sum((Counter(s["quarantine_reasons"]) for s in sources),
                                                Counter()).items()))
    out["licenses"] = sorted({s["license"] or "unknown" for s in sources})
    out["synthetic_records"] = sum(s["kept"] for s in sources if s["synthetic"])
    out["synthetic_share"] = round(out["synthetic_records"] / out["kept"], 4) if out["kept"] else 0.0
    chars = sum((Counter(e["reasoning_script_chars"]) for e in prov["sources"]), Counter())
    total = sum(chars.values())
    out["reasoning_scripts"] = {s: round(n / total, 4) for s, n in chars.most_common()}
    out["filters"] = prov["filters"]
    out["sources"] = sources
    return out


def _sampled_pairs(report: dict, role: str, name: str) -> dict:
    """Pairs of a model's own sampled replies (`qvq-tune data pairs`): synthetic by making;
    their prompts' data is the build they were sampled from (`prompts`)."""
    settings = report.get("settings", {})
    without = {k: v for k, v in (report.get("prompts_without_pair") or {}).items() if v}
    prompts = dataset_summary(settings["data"], "prompts") if settings.get("data") else None
    return {"role": role, "folder": name, "name": None, "hub_id": None, "build_fingerprint": report.get("fingerprint"),
            "records": report.get("prompts"), "kept": report.get("pairs"), "quarantined": sum(without.values()),
            "quarantine_reasons": dict(sorted(without.items())),
            "licenses": (prompts or {}).get("licenses") or ["unknown"], "synthetic_records": report.get("pairs"),
            "synthetic_share": 1.0 if report.get("pairs") else 0.0,
            "filters": [{"filter": f"data pairs: {settings.get('samples')} sampled replies per prompt at temperature "
                                   f"{settings.get('temperature')}, --pair-cut {settings.get('pair_cut')}"}],
            "generated": "replies sampled from the model being trained, scored and paired (qvq-tune data pairs)",
            "prompts": prompts, "sources": []}


def stage_fingerprint(datasets: list[dict]) -> str | None:
    """One hash of a stage's datasets' build fingerprints (None when none is known)."""
    prints = [d.get("build_fingerprint") for d in datasets]
    if not any(prints):
        return None
    return hashlib.sha256(json.dumps(prints).encode()).hexdigest()


def document(stages: list[dict]) -> dict:
    """A training-data document of `stages` (numbered in order)."""
    return {"schema": SCHEMA, "version": VERSION,
            "stages": [{**s, "stage": n} for n, s in enumerate(stages, 1)]}


def beside(folder: str | Path) -> Path:
    """Where the record of a folder that must not change (the cached tiny base, which runs in
    flight read) lies: `NAME.training_data.json` next to it."""
    folder = Path(folder)
    return folder.with_name(f"{folder.name}.{FILE}")


def find(folder: str | Path) -> Path | None:
    """A folder's training-data document: inside it, else beside it (`beside`), or None."""
    for path in (Path(folder) / FILE, beside(folder)):
        if path.is_file():
            return path
    return None


def read(folder: str | Path) -> dict:
    """The training-data document of `folder` (a run, an export, a base model; or the file), checked."""
    path = (find(folder) or Path(folder) / FILE) if Path(folder).is_dir() else Path(folder)
    if not path.is_file():
        raise UserError(f"no {FILE} here: give a run folder (runs/NAME) or an export folder made by this "
                        "qvq-tune", path=str(folder))
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON (line {exc.lineno}): {exc.msg}", path=str(path)) from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise UserError(f"not a training-data summary (schema is not {SCHEMA})", path=str(path), key="schema")
    if doc.get("version") != VERSION:
        raise UserError(f"training-data version {doc.get('version')!r}; this qvq-tune reads version {VERSION}",
                        path=str(path), key="version")
    if not isinstance(doc.get("stages"), list):
        raise UserError("stages is not a list", path=str(path), key="stages")
    return doc


def redact(doc: dict) -> dict:
    """A copy of `doc` without a path anywhere (`PATH_KEYS`); files stay known by sha256."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in PATH_KEYS}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node
    return {**strip(copy.deepcopy(doc)), "paths_redacted": True}


def hub_datasets(doc: dict) -> list[str]:
    """The Hub ids (OWNER/NAME) of the datasets any stage trained or validated on."""
    return sorted({d["hub_id"] for s in doc["stages"] for d in s.get("datasets", []) if d.get("hub_id")})


def totals(stage: dict, role: str = "train") -> dict:
    """A stage's records / tokens / synthetic share over its datasets of one role."""
    ds = [d for d in stage.get("datasets", []) if d.get("role") == role]
    kept = sum(d.get("kept") or 0 for d in ds)
    synthetic = sum(d.get("synthetic_records") or 0 for d in ds)
    return {"kept": kept, "tokens": sum(d.get("tokens") or 0 for d in ds),
            "synthetic_share": round(synthetic / kept, 4) if kept else 0.0}
