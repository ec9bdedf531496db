"""`qvq-tune export merge | adapter`: a merged model checked against base + adapter, or a serving-ready adapter."""

from __future__ import annotations

import json

HELP = "export a run: a merged model (streamed, proven against base + adapter) or an adapter for PEFT / vLLM"


def add_parser(sub) -> None:
    from ..export import requests
    from .args import add_dataclass_arguments

    p = sub.add_parser("export", help=HELP, description=HELP)
    s = p.add_subparsers(dest="export_command", metavar="ACTION")
    m = s.add_parser("merge", help="merge the adapter into the base, shard by shard, and prove the result",
                     description="Stream the base's safetensors shards, add the LoRA products in fp32, cast, "
                                 "write; reload the result and compare its logits with base + adapter (unmerged) "
                                 "on image+text samples; only a passing folder is renamed into place.")
    add_dataclass_arguments(m, requests.MergeRequest)
    m.set_defaults(func=_merge)
    a = s.add_parser("adapter", help="write a clean adapter folder for PEFT or vLLM",
                     description="Write the run's adapter for serving; --target vllm checks what vLLM accepts "
                                 "for Qwen2-VL / Qwen2.5-VL / Qwen3-VL, mends what it can (one line per change) "
                                 "or refuses with the reason, and writes the matching `vllm serve` command.")
    add_dataclass_arguments(a, requests.AdapterRequest)
    a.set_defaults(func=_adapter)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _merge(args) -> int:
    from ..export import requests, run
    from .args import dataclass_from_arguments
    report = run.export_merge(dataclass_from_arguments(requests.MergeRequest, args))
    proof = report["proof"]
    print(json.dumps({"out": report["out"], "license": report["license"]["license"],
                      "license_restriction": report["license"]["restriction"], "dtype": report["dtype"],
                      "base_weights": report["base_weights"], "proof_passed": proof["passed"],
                      "gated_on": proof["gated_on"], "vs_base_plus_adapter": proof["vs_base_plus_adapter"],
                      "vs_4bit_base_plus_adapter": proof["vs_4bit_base_plus_adapter"],
                      "peak_rss_mb": report["proof"]["peak_rss_mb"]}, indent=2))
    return 0


def _adapter(args) -> int:
    from ..export import requests, run
    from .args import dataclass_from_arguments
    report = run.export_adapter(dataclass_from_arguments(requests.AdapterRequest, args))
    if report["license"]["restriction"]:
        print(f"licence {report['license']['license']} accepted: {report['license']['restriction']}")
    for change in report["changes"]:
        print(f"changed: {change}")
    if report.get("vllm_serve"):
        print(report["vllm_serve"])
    print(report["out"])
    return 0
