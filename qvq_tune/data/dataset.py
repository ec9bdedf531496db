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


def is_built(path: str | Path, kind: str = "dataset") -> bool:
    """Whether `path` is a built dataset folder (or a build's output folder holding one)."""
    path = Path(path)
    return path.is_dir() and any(_is_hf_dataset(p) for p in (path, path / kind))


def load_samples(path: str | Path, kind: str = "dataset"):
    from datasets import load_from_disk

    path = Path(path)
    if not path.exists():
        raise UserError("dataset folder does not exist; run `qvq-tune data build` first", path=str(path))
    for candidate in (path, path / kind):
        if _is_hf_dataset(candidate):
            return load_from_disk(str(candidate))
    raise UserError(f"not a built dataset (no {kind}/ with dataset_info.json); "
                    "run `qvq-tune data build` to make one", path=str(path))


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
