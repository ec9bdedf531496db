"""`export merge | adapter` flags are generated from the request dataclasses, which check
themselves when made: every value that needs no file is refused before the licence gate
and before the adapter or the base is read. The licence ids are listed once."""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest

from qvq_tune.cli.args import dataclass_from_arguments
from qvq_tune.cli.main import build_parser
from qvq_tune.errors import UserError
from qvq_tune.export import requests
from qvq_tune.models.license import LICENSES

from .conftest import REPO

# A non-default value for every field that has a flag.
GIVEN = {"out": "o", "run": "r", "base": "b", "adapter": "a", "accept_license": "qwen", "force": True,
         "dtype": "fp32", "data": "d", "samples": 2, "qlora": True, "base_weights": "as-trained",
         "target": "vllm", "max_lora_rank": 64, "tower_lora": True, "redact_paths": True}


def argv(cls, values: dict) -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        if f.name in values and f.metadata.get("cli", True):
            flag = "--" + f.name.replace("_", "-")
            out += [flag] if values[f.name] is True else [flag, str(values[f.name])]
    return out


def subparser(action: str):
    export = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "export")[1]
    return export._subparsers._group_actions[0].choices[action]


@pytest.mark.parametrize("action,cls", [("merge", requests.MergeRequest), ("adapter", requests.AdapterRequest)])
def test_every_request_field_is_a_flag_and_comes_back_whole(action, cls):
    parser = subparser(action)
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    flagged = {f.name for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
    assert dests == flagged and "evaluation" not in dests
    values = {f.name: GIVEN[f.name] for f in dataclasses.fields(cls) if f.name in flagged}
    args = parser.parse_args(argv(cls, values))
    assert dataclass_from_arguments(cls, args) == cls(**values)
    defaults = dataclass_from_arguments(cls, parser.parse_args(["--out", "o"]))
    assert defaults == cls(out="o")                    # the flags' defaults are the request's


def test_a_new_request_field_becomes_a_flag_without_cli_edits(monkeypatch):
    from qvq_tune.export import run

    @dataclasses.dataclass(kw_only=True)
    class Extended(requests.MergeRequest):
        new_knob: int = dataclasses.field(default=3, metadata={"help": "a setting added later"})

    monkeypatch.setattr(requests, "MergeRequest", Extended)
    seen = []

    def export_merge(req):
        seen.append(req)
        raise UserError("stopped here")
    monkeypatch.setattr(run, "export_merge", export_merge)
    args = build_parser().parse_args(["export", "merge", "--out", "o", "--run", "r", "--new-knob", "7"])
    with pytest.raises(UserError, match="stopped here"):
        args.func(args)
    assert isinstance(seen[0], Extended) and seen[0].new_knob == 7 and seen[0].run == "r"


def test_licence_ids_are_listed_once():
    accept = next(a for a in subparser("merge")._actions if a.dest == "accept_license")
    assert tuple(accept.choices) == tuple(LICENSES)
    spelt = re.compile(r'"apache-2\.0",\s*"qwen",\s*"qwen-research"')
    assert [p.name for p in (REPO / "qvq_tune").rglob("*.py") if spelt.search(p.read_text())] == []


@pytest.mark.parametrize("kwargs,needle", [
    ({"dtype": "int8"}, "--dtype must be one of bf16, fp16, fp32"),
    ({"base_weights": "rounded"}, "--base-weights must be original or as-trained"),
    ({"samples": 0}, "--samples must be a positive integer"),
    ({"accept_license": "mit"}, "--accept-license must be one of apache-2.0, qwen"),
])
def test_bad_request_values_are_refused_when_made(kwargs, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        requests.MergeRequest(out="o", run="r", **kwargs)
    with pytest.raises(UserError, match="--target must be peft or vllm"):
        requests.AdapterRequest(out="o", target="onnx")


def test_base_weights_are_checked_before_the_licence_gate_and_the_adapter(tmp_path):
    """A base under the Qwen licence (not accepted) and a folder with no adapter: the
    --base-weights mistake is what the user hears first, and nothing is written."""
    from qvq_tune.export.run import MergeRequest, export_merge
    base, adapter, out = tmp_path / "base", tmp_path / "adapter", tmp_path / "out"
    base.mkdir()
    adapter.mkdir()
    shutil.copy(REPO / "tests" / "data" / "licenses" / "qwen.txt", base / "LICENSE")
    with pytest.raises(UserError, match="--base-weights must be original or as-trained"):
        export_merge(MergeRequest(out=out, base=base, adapter=adapter, base_weights="rounded"))
    with pytest.raises(UserError, match="as-trained applies to a QLoRA adapter"):
        export_merge(MergeRequest(out=out, base=base, adapter=adapter, base_weights="as-trained"))
    with pytest.raises(UserError, match="pass --accept-license qwen"):       # the gate comes next
        export_merge(MergeRequest(out=out, base=base, adapter=adapter, qlora=True, base_weights="as-trained"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base"]
