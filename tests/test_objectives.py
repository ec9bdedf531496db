"""Objectives as records (issue 17): every registered objective has every piece, and a
record missing one is caught; the data kinds are one vocabulary."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from qvq_tune import presets
from qvq_tune.data.kinds import KINDS, DataKind, data_kind, kind_of_columns
from qvq_tune.recipe import SECTION_OF, Recipe, recipe_from_dict
from qvq_tune.train.objectives import Objective, get, registered

from .conftest import REPO


def _shipped_objectives() -> set[str]:
    return {yaml.safe_load(p.read_text()).get("objective", "sft")
            for p in presets.folder(presets.RECIPES).glob("*.yaml")}


def missing_pieces(record: Objective, module_doc: str | None = "doc") -> list[str]:
    """What a registered objective lacks (empty: complete)."""
    out = []
    hints = typing.get_type_hints(Recipe)
    name = record.name
    if name not in typing.get_args(hints["objective"]):
        out.append("not an allowed recipe objective")
    section = SECTION_OF.get(name)
    if section is None or section not in hints or not dataclasses.is_dataclass(hints[section]):
        out.append("no recipe section")
    elif not callable(getattr(hints[section], "check_recipe", None)):
        out.append("its section has no check_recipe")
    if not isinstance(record.reads, DataKind) or KINDS.get(record.reads.name) is not record.reads:
        out.append("reads no known data kind")
    if not callable(record.trainer):
        out.append("no trainer builder")
    if not callable(record.checks):
        out.append("no checks")
    if not all(isinstance(k, str) for k in record.report_keys + record.plot_keys):
        out.append("report / plot keys are not metric names")
    if not set(record.plot_keys) <= set(record.report_keys):
        out.append("plots a metric the report does not keep")
    if name not in _shipped_objectives():
        out.append("no shipped recipe")
    if not record.doc or not module_doc:
        out.append("undocumented")
    return out


def test_the_registered_objectives_are_complete():
    import importlib
    objectives = registered()
    assert set(objectives) >= {"sft", "dpo"}
    for name, record in objectives.items():
        doc = importlib.import_module(f"qvq_tune.train.{name}").__doc__
        assert missing_pieces(record, doc) == [], name
        assert get(name) is record


@pytest.mark.parametrize("broken,piece", [
    (dict(name="nope"), "no recipe section"),
    (dict(reads=DataKind("prompts", "prompts", "x", "prompts")), "reads no known data kind"),
    (dict(trainer=None), "no trainer builder"),
    (dict(plot_keys=("rewards/other",)), "plots a metric the report does not keep"),
    (dict(doc=""), "undocumented"),
])
def test_a_record_missing_a_piece_is_caught(broken, piece):
    record = dataclasses.replace(get("dpo"), **broken)
    assert piece in missing_pieces(record)


def test_an_objective_without_a_shipped_recipe_is_caught(monkeypatch):
    monkeypatch.setattr(f"{__name__}._shipped_objectives", lambda: {"sft"})
    assert "no shipped recipe" in missing_pieces(get("dpo"))


def test_an_unknown_objective_is_refused_by_name():
    with pytest.raises(KeyError, match="known: sft, dpo"):
        get("ppo")


def test_another_objectives_section_set_is_an_error_at_its_key():
    hints = typing.get_type_hints(Recipe)
    for objective, section in SECTION_OF.items():
        other = next(o for o in SECTION_OF if o != objective)
        fields = typing.get_type_hints(hints[section])
        key = next(k for k, tp in fields.items() if tp in (float, int))
        value = getattr(hints[section](), key) + 1
        with pytest.raises(Exception) as e:
            recipe_from_dict({"objective": other, "method": "lora", "data": {"train": "d"},
                              section: {key: value}})
        assert f"{section}.{key} applies to objective {objective}" in str(e.value)


def test_the_data_kinds_are_one_vocabulary():
    """The kind names are what the build report counts (kept_<kind>), the folders where it writes."""
    from qvq_tune.data.writers import _features
    for kind in KINDS.values():
        assert data_kind(kind.name) is kind and data_kind(kind.folder) is kind
        assert kind_of_columns(_features(kind.name)) is kind
    with pytest.raises(KeyError):
        data_kind("dpo")


def test_the_packaged_and_top_level_recipes_are_one_folder():
    assert (REPO / "recipes").resolve() == Path(presets.folder(presets.RECIPES)).resolve()
