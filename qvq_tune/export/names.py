"""Match one weight's name across the layouts transformers has saved Qwen VL models in.

A base checkpoint may store the decoder as `model.language_model.*` (transformers >= 4.52)
or `model.*` / `language_model.*` (older saves; transformers 5 still writes the tiny
qwen2_vl that way), and an adapter's keys follow the module tree of the version that
trained it. `NameIndex.resolve` finds the one name of a set that a given name stands for,
trying the family's prefix aliases (`ModelFamily.weight_prefix_aliases`) in both directions.
"""

from __future__ import annotations

from collections.abc import Iterable

ADAPTER_PREFIX = "base_model.model."     # PEFT's prefix on every saved adapter key


def variants(name: str, aliases: tuple[tuple[str, str], ...]) -> set[str]:
    """`name` under every layout the aliases reach (two renames deep: old -> new -> old)."""
    seen, frontier = {name}, {name}
    for _ in range(2):
        step = set()
        for n in frontier:
            for a, b in aliases:
                for src, dst in ((a, b), (b, a)):
                    if n.startswith(src):
                        step.add(dst + n[len(src):])
        frontier = step - seen
        seen |= step
    return seen


class NameIndex:
    """A set of names (a checkpoint's weights, or a model's modules) to resolve others against."""

    def __init__(self, names: Iterable[str], aliases: tuple[tuple[str, str], ...]):
        self.names = set(names)
        self.aliases = aliases

    def resolve(self, name: str) -> str | None:
        """The one name of the set that `name` is, under some layout; None when none is.
        Several candidates mean the set holds one weight twice: a ValueError."""
        if name in self.names:
            return name
        hits = sorted(v for v in variants(name, self.aliases) if v in self.names)
        if len(hits) > 1:
            raise ValueError(f"{name!r} matches several names: {hits}")
        return hits[0] if hits else None
