"""Model families as data: what trainers, export and license checks need to know."""

from .registry import FAMILIES, CHECKPOINTS, ModelFamily, Checkpoint, get_family, supported_names

__all__ = ["FAMILIES", "CHECKPOINTS", "ModelFamily", "Checkpoint", "get_family", "supported_names"]
