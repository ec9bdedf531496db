"""The kinds of built data: one name per kind, used by the build, the merge, the dataset
checks, the trainers (an objective's `reads`) and the build report (`kept_<name>`).

    sft         a prompt and one reply (input ids, labels, spans)      -> OUT/dataset/
    preference  a prompt, a chosen and a rejected reply                -> OUT/preference/

The folder names are the on-disk layout older builds already have; the kind's `name` is
the one word code and reports use. A folder's kind is read from the columns its
`dataset_info.json` records (`marker`), so a kind is never guessed from a path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataKind:
    name: str            # the one name: recipes' objectives read it, reports count it (kept_<name>)
    folder: str          # OUT/<folder>/ of a build or a merge
    marker: str          # a column only samples of this kind have
    what: str            # how an error describes it

    def __str__(self) -> str:
        return self.name


SFT = DataKind("sft", "dataset", "labels", "SFT samples (a prompt and one reply)")
PREFERENCE = DataKind("preference", "preference", "chosen_input_ids",
                      "preference pairs (records with chosen and rejected replies)")
KINDS = {k.name: k for k in (SFT, PREFERENCE)}


def data_kind(kind: str | DataKind) -> DataKind:
    """The kind of that name (or of that folder name: `OUT/dataset` is sft)."""
    if isinstance(kind, DataKind):
        return kind
    for k in KINDS.values():
        if kind in (k.name, k.folder):
            return k
    raise KeyError(f"unknown data kind {kind!r} (known: {', '.join(KINDS)})")


def kind_of_columns(columns) -> DataKind | None:
    """The kind whose marker column is among `columns` (preference first: it has no labels)."""
    for k in sorted(KINDS.values(), key=lambda k: k.name != "preference"):
        if k.marker in columns:
            return k
    return None
