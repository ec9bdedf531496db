"""`qvq-tune data build | merge`: turn your files into a validated, rendered training dataset,
in one go or as shards built in parallel and merged."""

from __future__ import annotations

import dataclasses
import sys

HELP = "build a training dataset from JSON/JSONL/parquet/arrow/HF folders (validate, quarantine, render)"


def add_parser(sub) -> None:
    from ..data.build import BuildConfig
    from .args import add_dataclass_arguments

    p = sub.add_parser("data", help=HELP, description=HELP)
    s = p.add_subparsers(dest="data_command", metavar="ACTION")
    b = s.add_parser("build", help="validate, render and cache a dataset for training",
                     description="Read records, quarantine bad ones (OUT/quarantine.jsonl), render the "
                                 "rest with the model's processor and chat template into OUT/dataset "
                                 "(and OUT/preference for DPO pairs), and write OUT/report.json.")
    add_dataclass_arguments(b, BuildConfig)
    b.set_defaults(func=_build)
    m = s.add_parser("merge", help="join the shards of a build (--num-shards N) into one dataset",
                     description="Join the outputs of `data build --num-shards N --shard-index I` (every I "
                                 "once) into OUT: the samples, quarantine and report an unsharded build "
                                 "would have written.")
    m.add_argument("shards", nargs="+", metavar="SHARD_DIR", help="the shards' output folders")
    m.add_argument("--out", required=True, metavar="DIR", help="output folder")
    m.set_defaults(func=_merge)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _build(args) -> int:
    from ..data.build import BuildConfig, build
    from ..tiny.resolve import resolve_model_dir
    from .args import dataclass_from_arguments

    config = dataclass_from_arguments(BuildConfig, args)          # validates before any model is built
    config = dataclasses.replace(config, model=str(resolve_model_dir(config.model)))
    report = build(config, log=lambda msg: print(msg, file=sys.stderr), progress=sys.stderr.isatty())
    return _print_outputs(report)


def _merge(args) -> int:
    from ..data.merge import merge

    report = merge(args.shards, args.out, log=lambda msg: print(msg, file=sys.stderr))
    return _print_outputs(report)


def _print_outputs(report: dict) -> int:
    for name, path in ((k, v) for k, v in report["outputs"].items() if v):
        print(f"{name}: {path}")
    print(f"report: {report['settings']['out']}/report.json")
    return 0
