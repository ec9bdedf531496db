"""`qvq-tune` entry point: dispatch to sub-command modules; user errors become one line.

Each module in `SUBCOMMANDS` exposes `HELP` (one line) and `add_parser(subparsers)`,
which registers its parser with `set_defaults(func=...)`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = ("demo", "models", "zoo", "synth", "data", "train", "plan", "eval", "export", "license")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qvq-tune",
        description="Adapt Qwen's multimodal reasoning models (QVQ, Qwen2-VL, Qwen2.5-VL, Qwen3-VL) "
                    "to your own images.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"qvq-tune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__package__}.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    from ..errors import UserError
    from ..logs import quiet_third_party

    quiet_third_party()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"qvq-tune {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"qvq-tune {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
