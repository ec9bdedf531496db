"""`qvq-tune zoo`: build tiny checkpoints of each family, or the pre-trained tiny base."""

from __future__ import annotations

HELP = "build tiny offline checkpoints of any family (and the pre-trained tiny base)"


def add_parser(sub) -> None:
    from ..models.registry import supported_names
    p = sub.add_parser("zoo", help=HELP, description=HELP)
    s = p.add_subparsers(dest="zoo_command", metavar="ACTION")
    b = s.add_parser("build", help="write a tiny random-weight checkpoint of FAMILY",
                     description="Write a tiny checkpoint (config, weights, tokenizer, processor) of FAMILY.")
    b.add_argument("family", choices=supported_names())
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_build)
    base = s.add_parser("base", help="build (or find) the pre-trained tiny base; print its folder",
                        description="Pre-train the tiny QVQ-like base on synthetic captions (cached).")
    base.set_defaults(func=_base)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _build(args) -> int:
    from ..tiny.zoo import build_tiny
    print(build_tiny(args.family, args.out, seed=args.seed))
    return 0


def _base(args) -> int:
    from ..tiny.pretrain import ensure_tiny_base
    print(ensure_tiny_base())
    return 0
