"""Benchmark the streamed merge's peak memory against the largest shard and the whole model.

Builds a bigger zoo checkpoint (default: a qwen2_vl with hidden 768, 12 layers, MLP 3072,
about 110M parameters, ~450 MB in fp32), saves it in shards of a given size (10+ files),
adds a random LoRA adapter (r=16 on the 7 language-model projections), then merges it into
bf16 in a fresh child process per case and reads the child's peak resident memory
(`VmHWM`: unlike `ru_maxrss`, it does not inherit the parent's size across fork + exec). Side by side, in the same way:
- the child's baseline: the same imports, no merge (what Python + torch cost anyway);
- PEFT's whole-model path (load the base in fp32, `merge_and_unload`, cast, save), which
  is what export did before.
Prints, per shard size, peak - baseline against the largest shard and the whole model.
Target: the streamed merge stays below 3x the largest shard, however many shards.

    python scripts/bench_merge.py [--shard-mb 40 30] [--hidden 768 --layers 12] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD_BASELINE = """
import torch, safetensors.torch, transformers, peft
from qvq_tune.export.proof import peak_rss_mb
import qvq_tune.export.merge, qvq_tune.export.adapter
print(peak_rss_mb())
"""

CHILD_STREAMED = """
import sys, torch, safetensors.torch, transformers, peft
from qvq_tune.export.proof import peak_rss_mb
from qvq_tune.export.adapter import Adapter
from qvq_tune.export.merge import base_shards, plan_merge, stream_merge
from qvq_tune.models.registry import WEIGHT_PREFIX_ALIASES
base, adapter, out = sys.argv[1:4]
import os; os.makedirs(out, exist_ok=True)
shards = base_shards(base)
stream_merge(base, shards, plan_merge(Adapter.load(adapter), shards, WEIGHT_PREFIX_ALIASES), out, "bfloat16")
print(peak_rss_mb())
"""

CHILD_PEFT = """
import sys, torch, safetensors.torch, transformers, peft
from qvq_tune.export.proof import peak_rss_mb
from peft import PeftModel
from transformers import AutoModelForImageTextToText
base, adapter, out = sys.argv[1:4]
model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
merged = PeftModel.from_pretrained(model, adapter).merge_and_unload().to(torch.bfloat16)
merged.save_pretrained(out)
print(peak_rss_mb())
"""


def child_peak_mb(code: str, *args: str) -> float:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def build_base(work: Path, hidden: int, layers: int, intermediate: int) -> Path:
    from qvq_tune.models.tiny_shapes import TinySpec
    from qvq_tune.tiny.zoo import build_tiny
    if (work / "single" / "config.json").is_file():       # a kept --work-dir
        return work / "single"
    heads = hidden // 64
    spec = TinySpec(hidden=hidden, layers=layers, heads=heads, kv_heads=heads, head_dim=64,
                    intermediate=intermediate, mrope_section=(8, 12, 12), vision_embed=128,
                    initializer_range=0.02)
    return build_tiny("qwen2_vl", work / "single", spec=spec)


def shard(single: Path, out: Path, shard_mb: int) -> Path:
    import torch
    from transformers import AutoModelForImageTextToText
    if (out / "model.safetensors.index.json").is_file():
        return out
    shutil.copytree(single, out, ignore=shutil.ignore_patterns("model.safetensors*"))
    model = AutoModelForImageTextToText.from_pretrained(str(single), dtype=torch.float32)
    model.save_pretrained(str(out), max_shard_size=f"{shard_mb}MB")
    return out


def make_adapter(base: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from qvq_tune.models.registry import get_family
    if (out / "adapter_config.json").is_file():
        return out
    model = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                        target_modules=get_family("qwen2_vl").lora_target_regex())
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def sizes_mb(base: Path) -> tuple[int, float, float]:
    files = sorted(base.glob("model*.safetensors"))
    return len(files), max(f.stat().st_size for f in files) / 2**20, sum(f.stat().st_size for f in files) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--shard-mb", type=int, nargs="+", default=[40, 30])
    ap.add_argument("--no-peft", action="store_true", help="skip PEFT's whole-model merge")
    ap.add_argument("--work-dir", help="keep files here (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="qvq-bench-merge-"))
    try:
        single = build_base(work, args.hidden, args.layers, args.intermediate)
        adapter = make_adapter(single, work / "adapter")
        baseline = child_peak_mb(CHILD_BASELINE)
        rows = []
        for mb in args.shard_mb:
            base = shard(single, work / f"base-{mb}mb", mb)
            n, largest, whole = sizes_mb(base)
            streamed = child_peak_mb(CHILD_STREAMED, str(base), str(adapter), str(work / f"streamed-{mb}"))
            peft = None if args.no_peft else \
                child_peak_mb(CHILD_PEFT, str(base), str(adapter), str(work / f"peft-{mb}"))
            rows.append({"shards": n, "largest_shard_mb": round(largest, 1), "model_mb": round(whole, 1),
                         "baseline_mb": round(baseline, 1), "streamed_peak_mb": round(streamed, 1),
                         "streamed_over_baseline_mb": round(streamed - baseline, 1),
                         "streamed_x_largest_shard": round((streamed - baseline) / largest, 2),
                         "streamed_x_model": round((streamed - baseline) / whole, 2),
                         "peft_peak_mb": round(peft, 1) if peft else None,
                         "peft_x_model": round((peft - baseline) / whole, 2) if peft else None})
            shutil.rmtree(work / f"streamed-{mb}", ignore_errors=True)
            shutil.rmtree(work / f"peft-{mb}", ignore_errors=True)
        print(json.dumps(rows, indent=2))
        print(f"\n{'shards':>6} {'largest MB':>10} {'model MB':>9} | {'streamed - baseline MB':>22} "
              f"{'x largest':>9} {'x model':>7} | {'PEFT - baseline MB':>18} {'x model':>7}")
        for r in rows:
            peft_cols = (f"{r['peft_peak_mb'] - r['baseline_mb']:>18.0f} {r['peft_x_model']:>7.2f}"
                         if r["peft_peak_mb"] else f"{'-':>18} {'-':>7}")
            print(f"{r['shards']:>6} {r['largest_shard_mb']:>10.1f} {r['model_mb']:>9.1f} | "
                  f"{r['streamed_over_baseline_mb']:>22.0f} {r['streamed_x_largest_shard']:>9.2f} "
                  f"{r['streamed_x_model']:>7.2f} | {peft_cols}")
        print(f"(baseline: the child's imports alone, {baseline:.0f} MB; target: streamed < 3x the largest shard)")
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
