"""`qvq-tune export merge | adapter`: a merged model checked against base + adapter, or a serving-ready adapter."""

from __future__ import annotations

import json

HELP = "export a run: a merged model (streamed, proven against base + adapter) or an adapter for PEFT / vLLM"
LICENSES = ("apache-2.0", "qwen", "qwen-research", "tongyi-qianwen", "unknown")


def _common(p) -> None:
    p.add_argument("--run", help="run folder (runs/NAME) with adapter/, recipe.yaml and dataset.json")
    p.add_argument("--base", help="base checkpoint folder (instead of --run, with --adapter)")
    p.add_argument("--adapter", help="PEFT adapter folder (instead of --run, with --base)")
    p.add_argument("--out", required=True, help="export folder (written only when complete and checked)")
    p.add_argument("--accept-license", choices=LICENSES, metavar="ID",
                   help=f"accept the base model's licence ({', '.join(LICENSES)}); required unless it is apache-2.0")
    p.add_argument("--force", action="store_true", help="replace an existing export folder")


def add_parser(sub) -> None:
    p = sub.add_parser("export", help=HELP, description=HELP)
    s = p.add_subparsers(dest="export_command", metavar="ACTION")
    m = s.add_parser("merge", help="merge the adapter into the base, shard by shard, and prove the result",
                     description="Stream the base's safetensors shards, add the LoRA products in fp32, cast, "
                                 "write; reload the result and compare its logits with base + adapter (unmerged) "
                                 "on image+text samples; only a passing folder is renamed into place.")
    _common(m)
    m.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    m.add_argument("--data", help="built dataset for the proof's samples (default: the run's training data)")
    m.add_argument("--samples", type=int, default=4, help="samples in the proof (default 4)")
    m.add_argument("--qlora", action="store_true",
                   help="with --base/--adapter: the adapter was trained on a 4-bit (nf4) base; also compare with it")
    m.add_argument("--base-weights", choices=["original", "as-trained"], default="original",
                   help="QLoRA: merge into the original weights (default), or into their 4-bit rounding as the "
                        "adapter was trained on (bf16 output that computes what the 4-bit model + adapter did)")
    m.set_defaults(func=_merge)
    a = s.add_parser("adapter", help="write a clean adapter folder for PEFT or vLLM",
                     description="Write the run's adapter for serving; --target vllm checks what vLLM accepts "
                                 "for Qwen2-VL / Qwen2.5-VL / Qwen3-VL, mends what it can (one line per change) "
                                 "or refuses with the reason, and writes the matching `vllm serve` command.")
    _common(a)
    a.add_argument("--target", choices=["peft", "vllm"], default="peft")
    a.add_argument("--max-lora-rank", type=int, help="vLLM --max-lora-rank (default: the smallest that fits r)")
    a.add_argument("--tower-lora", action="store_true",
                   help="vllm: keep LoRA on the vision tower / merger (serves with --enable-tower-connector-lora)")
    a.set_defaults(func=_adapter)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _merge(args) -> int:
    from ..export.run import MergeRequest, export_merge
    report = export_merge(MergeRequest(out=args.out, run=args.run, base=args.base, adapter=args.adapter,
                                       data=args.data, dtype=args.dtype, accept_license=args.accept_license,
                                       force=args.force, samples=args.samples, qlora=args.qlora,
                                       base_weights=args.base_weights))
    proof = report["proof"]
    print(json.dumps({"out": report["out"], "license": report["license"]["license"],
                      "license_restriction": report["license"]["restriction"], "dtype": report["dtype"],
                      "base_weights": report["base_weights"], "proof_passed": proof["passed"],
                      "gated_on": proof["gated_on"], "vs_base_plus_adapter": proof["vs_base_plus_adapter"],
                      "vs_4bit_base_plus_adapter": proof["vs_4bit_base_plus_adapter"],
                      "peak_rss_mb": report["proof"]["peak_rss_mb"]}, indent=2))
    return 0


def _adapter(args) -> int:
    from ..export.run import AdapterRequest, export_adapter
    report = export_adapter(AdapterRequest(out=args.out, target=args.target, run=args.run, base=args.base,
                                           adapter=args.adapter, max_lora_rank=args.max_lora_rank,
                                           tower_lora=args.tower_lora, accept_license=args.accept_license,
                                           force=args.force))
    if report["license"]["restriction"]:
        print(f"licence {report['license']['license']} accepted: {report['license']['restriction']}")
    for change in report["changes"]:
        print(f"changed: {change}")
    if report.get("vllm_serve"):
        print(report["vllm_serve"])
    print(report["out"])
    return 0
