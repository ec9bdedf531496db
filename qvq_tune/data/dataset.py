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
