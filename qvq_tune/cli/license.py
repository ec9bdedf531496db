"""`qvq-tune license check DIR`: which licence a checkpoint folder is under, and what it asks."""

from __future__ import annotations

import json

HELP = "classify a checkpoint's licence from its LICENSE text and model card"


def add_parser(sub) -> None:
    p = sub.add_parser("license", help=HELP, description=HELP)
    s = p.add_subparsers(dest="license_command", metavar="ACTION")
    c = s.add_parser("check", help="print the licence verdict, its conditions and the evidence",
                     description="Classify DIR's licence (apache-2.0, qwen, qwen-research, tongyi-qianwen or "
                                 "unknown) from its LICENSE text first and its model card second.")
    c.add_argument("model_dir", metavar="DIR")
    c.add_argument("--json", action="store_true", help="print the full verdict as JSON")
    c.set_defaults(func=_check)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _check(args) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..models.license import classify
    if not Path(args.model_dir).is_dir():
        raise UserError("not a folder", path=args.model_dir)
    report = classify(args.model_dir)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"licence: {report.license} ({report.name}), from {report.source}")
    needed = "yes" if report.requires_acceptance else "no"
    print(f"commercial use: {report.commercial_use}; acceptance required: {needed}")
    for condition in report.conditions:
        print(f"  - {condition}")
    for e in report.evidence:
        print(f"  {e.file}:{e.line} [{e.clause}] {e.text[:100]}")
    if report.disagreement:
        print(f"disagreement: {report.disagreement}")
    if report.hint:
        print(f"hint: {report.hint}")
    return 0
