"""Open a built dataset (the output of `qvq-tune data build`) for the trainers.

Accepts the build's output folder (which holds one folder per data kind, `data/kinds.py`:
`dataset/` for sft samples, `preference/` for preference pairs) or one of those folders
directly. The returned
`datasets.Dataset` is memory-mapped from Arrow files; nothing is re-tokenised.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .kinds import SFT, DataKind, data_kind, kind_of_columns


def _is_hf_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "state.json").is_file()


def find_samples(path: str | Path, kind: str | DataKind = SFT) -> Path | None:
    """The samples folder of one data kind (`data/kinds.py`) of a build output folder (or
    that folder itself, given `OUT/dataset` / `OUT/preference`), or None."""
    path, kind = Path(path), data_kind(kind)
    for candidate in (path / kind.folder, path):
        if _is_hf_dataset(candidate) and kind_of(candidate) == kind:
            return candidate
    return None


def is_built(path: str | Path, kind: str | DataKind = SFT) -> bool:
    """Whether `path` is a built dataset folder (or a build's output folder holding one)."""
    return find_samples(path, kind) is not None


def kind_of(folder: Path) -> DataKind | None:
    """A samples folder's data kind, from the columns recorded in its dataset_info.json."""
    import json
    try:
        features = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8")).get("features", {})
    except (OSError, json.JSONDecodeError):
        return None
    return kind_of_columns(features)


def kinds_in(path: str | Path) -> list[DataKind]:
    """The data kinds a build output folder (or a samples folder) holds."""
    from .kinds import KINDS
    return [k for k in KINDS.values() if find_samples(path, k) is not None]


def load_samples(path: str | Path, kind: str | DataKind = SFT):
    from datasets import load_from_disk

    path, kind = Path(path), data_kind(kind)
    if not path.exists():
        raise UserError("dataset folder does not exist; run `qvq-tune data build` first", path=str(path))
    folder = find_samples(path, kind)
    if folder is None:
        raise UserError(f"not a built dataset (no {kind.folder}/ with dataset_info.json); "
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
