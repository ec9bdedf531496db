"""Open a built dataset (the output of `qvq-tune data build`) for the trainers.

Accepts the build's output folder (which holds `dataset/` for SFT samples and
`preference/` for DPO pairs) or one of those dataset folders directly. The returned
`datasets.Dataset` is memory-mapped from Arrow files; nothing is re-tokenised.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def _is_hf_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "state.json").is_file()


def find_samples(path: str | Path, kind: str = "dataset") -> Path | None:
    """The samples folder of one kind ("dataset": SFT, "preference": DPO) of a build output
    folder (or that folder itself, given `OUT/dataset` / `OUT/preference`), or None."""
    path = Path(path)
    for candidate in (path / kind, path):
        if _is_hf_dataset(candidate) and _kind_of(candidate) == kind:
            return candidate
    return None


def is_built(path: str | Path, kind: str = "dataset") -> bool:
    """Whether `path` is a built dataset folder (or a build's output folder holding one)."""
    return find_samples(path, kind) is not None


def _kind_of(folder: Path) -> str | None:
    """"dataset" or "preference", from the columns recorded in dataset_info.json."""
    import json
    try:
        features = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8")).get("features", {})
    except (OSError, json.JSONDecodeError):
        return None
    if "chosen_input_ids" in features:
        return "preference"
    return "dataset" if "labels" in features else None


def load_samples(path: str | Path, kind: str = "dataset"):
    from datasets import load_from_disk

    path = Path(path)
    if not path.exists():
        raise UserError("dataset folder does not exist; run `qvq-tune data build` first", path=str(path))
    folder = find_samples(path, kind)
    if folder is None:
        raise UserError(f"not a built dataset (no {kind}/ with dataset_info.json); "
                        "run `qvq-tune data build` to make one", path=str(path))
    return load_from_disk(str(folder))


def build_report(path: str | Path) -> dict | None:
    """The `report.json` of the build a dataset folder came from: the build's output folder
    itself, or its parent when given `OUT/dataset` / `OUT/preference`; None when absent."""
    import json
    path = Path(path)
    for candidate in (path / "report.json", path.parent / "report.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise UserError("a build report that is not valid JSON; rebuild the dataset",
                                path=str(candidate)) from None
    return None


# Build settings that change what the processor produces: the processor must be loaded
# with them wherever the dataset's samples are turned into pixels.
PROCESSOR_SETTINGS = ("min_pixels", "max_pixels")


def processor_settings(path: str | Path) -> dict:
    """`load_processor` keyword arguments a dataset was built with ({} when the build
    used the processor's own defaults)."""
    settings = (build_report(path) or {}).get("settings", {})
    return {k: settings[k] for k in PROCESSOR_SETTINGS if settings.get(k) is not None}
