"""Command-line flags generated from a config dataclass, so the two never drift apart.

Each field becomes `--field-name` (or `metadata["flag"]`) with its type, default, help,
`choices` and `metavar` from the field; a `bool` is a switch (`store_false` when its
default is True); `metadata["parse"]` turns the flag's text into the field's value when
the dataclass is built (inside the CLI's error handling, so a bad value is one line); a
field with `metadata["cli"] = False` has no flag (it keeps its default).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _scalar(tp):
    """int / float / str of a field type such as `int | None` or `Literal[0, 2, 3]`."""
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp if tp in (int, float, str) else str


def _flag_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in _flag_fields(cls):
        meta, tp = f.metadata, hints[f.name]
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        kwargs: dict = {"dest": f.name, "help": meta.get("help")}
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if tp is bool:
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            kwargs["type"] = str if "parse" in meta else _scalar(tp)
            if typing.get_origin(tp) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(tp))
            for key in ("choices", "metavar"):
                if key in meta:
                    kwargs[key] = meta[key]
            if required:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default_factory() if f.default is dataclasses.MISSING else f.default
        parser.add_argument(flag, **kwargs)


def dataclass_from_arguments(cls, args: argparse.Namespace, **changes):
    """The dataclass with every field taken from parsed `args` (then `changes`)."""
    values = {}
    for f in _flag_fields(cls):
        value = getattr(args, f.name)
        parse = f.metadata.get("parse")
        values[f.name] = parse(value) if parse is not None and isinstance(value, str) else value
    return cls(**{**values, **changes})


def arguments_from_dataclass(obj, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that rebuild `obj` through `dataclass_from_arguments` (fields at their default
    and those in `skip` left out): the command line a batch script repeats."""
    out: list[str] = []
    for f in _flag_fields(type(obj)):
        default = f.default_factory() if f.default is dataclasses.MISSING and \
            f.default_factory is not dataclasses.MISSING else f.default
        value = getattr(obj, f.name)
        if f.name in skip or value == default:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag)
        elif isinstance(value, dict):
            out += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(map(str, value))]
        else:
            out += [flag, str(value)]
    return out
