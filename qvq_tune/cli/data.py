"""`qvq-tune data build`: turn your files into a validated, rendered training dataset."""

from __future__ import annotations

import sys

HELP = "build a training dataset from JSON/JSONL/parquet/arrow/HF folders (validate, quarantine, render)"


def add_parser(sub) -> None:
    from ..data.build import BuildConfig
    from ..data.readers import FORMATS
    from ..data.reasoning import FORMATS as REASONING

    p = sub.add_parser("data", help=HELP, description=HELP)
    s = p.add_subparsers(dest="data_command", metavar="ACTION")
    b = s.add_parser("build", help="validate, render and cache a dataset for training",
                     description="Read records, quarantine bad ones (OUT/quarantine.jsonl), render the "
                                 "rest with the model's processor and chat template into OUT/dataset "
                                 "(and OUT/preference for DPO pairs), and write OUT/report.json.")
    b.add_argument("--input", required=True, metavar="FILE_OR_DIR",
                   help=".jsonl/.json/.parquet/.arrow file, HF datasets folder, or a folder of them")
    b.add_argument("--model", required=True, metavar="DIR_OR_FAMILY",
                   help="checkpoint folder, 'tiny' (the embedded base), or a family name "
                        "(a tiny offline model of it is built)")
    b.add_argument("--out", required=True, metavar="DIR")
    b.add_argument("--format", default="auto", choices=FORMATS)
    b.add_argument("--image-root", metavar="DIR",
                   help="folder relative media paths start from, and must stay inside (default: the input file's folder)")
    b.add_argument("--reasoning", choices=REASONING, help="how replies are written (default: the model's style)")
    b.add_argument("--min-pixels", type=int, metavar="N")
    b.add_argument("--max-pixels", type=int, metavar="N")
    b.add_argument("--max-tokens", type=int, metavar="N", help="quarantine samples longer than N tokens")
    b.add_argument("--truncate", action="store_true", help="cut samples over --max-tokens instead of quarantining")
    b.add_argument("--strict", action="store_true", help="stop at the first bad record")
    b.add_argument("--columns", default="", metavar="CANONICAL=YOURS,...",
                   help="rename your fields, e.g. question=problem,answer=solution")
    b.add_argument("--allow-remote", action="store_true", help="download http(s) media")
    b.add_argument("--workers", type=int, metavar="N", help="processes (default: min(4, CPUs))")
    b.add_argument("--system", metavar="TEXT", help="system prompt for records without one")
    b.add_argument("--fps", type=float, default=BuildConfig.fps, help="video frames sampled per second")
    b.add_argument("--max-frames", type=int, default=BuildConfig.max_frames, help="frames per video at most")
    b.add_argument("--max-image-pixels", type=int, default=BuildConfig.max_image_pixels,
                   help="larger images are quarantined (decompression-bomb guard)")
    b.add_argument("--no-cache", action="store_true", help="rebuild even if nothing changed")
    b.set_defaults(func=_build)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def parse_columns(text: str) -> dict[str, str]:
    from ..errors import UserError
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        canonical, sep, theirs = item.partition("=")
        if not sep or not canonical.strip() or not theirs.strip():
            raise UserError(f"--columns item {item!r} is not CANONICAL=YOURS", key="columns")
        out[canonical.strip()] = theirs.strip()
    return out


def _build(args) -> int:
    from ..data.build import BuildConfig, build

    config = BuildConfig(
        input=args.input, model=args.model, out=args.out, format=args.format, image_root=args.image_root,
        reasoning=args.reasoning, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
        max_tokens=args.max_tokens, truncate=args.truncate, strict=args.strict,
        columns=parse_columns(args.columns), allow_remote=args.allow_remote, workers=args.workers,
        system=args.system, fps=args.fps, max_frames=args.max_frames,
        max_image_pixels=args.max_image_pixels, reuse=not args.no_cache)
    report = build(config, log=lambda msg: print(msg, file=sys.stderr), progress=sys.stderr.isatty())
    outputs = {k: v for k, v in report["outputs"].items() if v}
    for name, path in outputs.items():
        print(f"{name}: {path}")
    print(f"report: {report['settings']['out']}/report.json")
    return 0
