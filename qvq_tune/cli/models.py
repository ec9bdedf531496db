"""`qvq-tune models`: list supported families, detect a local checkpoint's family."""

from __future__ import annotations

import json
from dataclasses import asdict

HELP = "list supported model families; detect the family of a local checkpoint"


def add_parser(sub) -> None:
    p = sub.add_parser("models", help=HELP, description=HELP)
    s = p.add_subparsers(dest="models_command", metavar="ACTION")
    d = s.add_parser("detect", help="print a local checkpoint's family as JSON",
                     description="Read DIR/config.json and print the model family as JSON.")
    d.add_argument("model_dir", metavar="DIR")
    d.set_defaults(func=_detect)
    ls = s.add_parser("list", help="print the family registry as JSON",
                      description="Print every supported family and known checkpoint as JSON.")
    ls.set_defaults(func=_list)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _detect(args) -> int:
    from ..models.detect import detect
    print(json.dumps(detect(args.model_dir).to_dict(), indent=2))
    return 0


def _list(args) -> int:
    from ..models.registry import CHECKPOINTS, FAMILIES
    out = {"families": {k: v.to_dict() for k, v in FAMILIES.items()},
           "checkpoints": {k: asdict(v) for k, v in CHECKPOINTS.items()}}
    print(json.dumps(out, indent=2))
    return 0
