"""Files shipped inside the package: launcher presets and recipes.

`accelerate/` holds the accelerate configs (and DeepSpeed JSONs they point at) that
`--accelerate-config NAME` resolves to; `recipes/` holds the YAML recipes, including the
demo's. The repository's top-level `accelerate_configs/` and `recipes/` are the
user-facing copies of these (a test keeps them equal), so an installed copy finds
everything without a checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

ACCELERATE, RECIPES = "accelerate", "recipes"


def folder(kind: str) -> Path:
    """The packaged folder of one kind (a real directory: the package is never zipped)."""
    return Path(str(resources.files(__package__).joinpath(kind)))


def names(kind: str) -> list[str]:
    return sorted(p.stem for p in folder(kind).glob("*.yaml"))


def find(kind: str, name: str) -> Path | None:
    """The packaged `NAME.yaml` of a kind, or None."""
    path = folder(kind) / f"{name}.yaml"
    return path if name and "/" not in name and path.is_file() else None
