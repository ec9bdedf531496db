"""Files shipped inside the package: launcher presets, recipes and licence texts.

`accelerate/` holds the accelerate configs (and DeepSpeed JSONs they point at) that
`--accelerate-config NAME` resolves to; `recipes/` holds the YAML recipes, including the
demo's; `licenses/` the licence texts the tiny zoo writes next to its checkpoints
(copies of `tests/data/licenses/`, whose SOURCES.md says where they come from). The
repository's top-level `accelerate_configs/` and `recipes/` are the user-facing copies of
the first two (a test keeps them equal), so an installed copy finds everything without a
checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

ACCELERATE, RECIPES, LICENSES = "accelerate", "recipes", "licenses"


def folder(kind: str) -> Path:
    """The packaged folder of one kind (a real directory: the package is never zipped)."""
    return Path(str(resources.files(__package__).joinpath(kind)))


def names(kind: str) -> list[str]:
    return sorted(p.stem for p in folder(kind).glob("*.yaml"))


def find(kind: str, name: str) -> Path | None:
    """The packaged `NAME.yaml` of a kind, or None."""
    path = folder(kind) / f"{name}.yaml"
    return path if name and "/" not in name and path.is_file() else None


def license_files() -> dict[str, Path]:
    """Licence id -> its packaged full text (`ID.txt`)."""
    return {p.stem: p for p in sorted(folder(LICENSES).glob("*.txt"))}


def license_text(license_id: str) -> str:
    """The packaged text of a licence the tiny zoo can give its checkpoints."""
    files = license_files()
    if license_id not in files:
        raise KeyError(f"no packaged text for licence {license_id!r} (have: {', '.join(files)})")
    return files[license_id].read_text(encoding="utf-8")
