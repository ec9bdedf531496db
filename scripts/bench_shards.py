"""Benchmark a sharded `qvq-tune data build` + `data merge` against one unsharded build.

Writes a synthetic native-JSONL task (N records with PNG images), builds it once whole,
then as S shards one after another (on a cluster they run at the same time) and merges
them; checks the merged dataset equals the whole one, and prints, side by side:
- the shards' total time over the whole build's (the work sharding adds: every shard
  reads and parses the whole input, and loads the processor once);
- the slowest shard plus the merge over the whole build (the wall time when the shards
  run in parallel on S machines);
- the merge alone over the whole build.

    python scripts/bench_shards.py --records 2000 --shards 4 [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1, help="processes per build")
    ap.add_argument("--work-dir", help="keep files here (default: a temporary folder)")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.work_dir:
        return run(args, Path(args.work_dir))
    with tempfile.TemporaryDirectory(prefix="qvq-bench-shards-") as work:
        run(args, Path(work))


def run(args, work: Path) -> None:
    import datasets

    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.data.merge import merge
    from qvq_tune.synth.generate import SynthConfig, generate
    from qvq_tune.tiny.zoo import build_tiny

    task, model = work / f"task-{args.records}", work / "tiny-qwen2_vl"
    if not (task / "train.jsonl").is_file():
        generate(SynthConfig(train=args.records, validation=0, test=0, dpo=False), task, progress=False)
    if not (model / "config.json").is_file():
        build_tiny("qwen2_vl", model)

    def timed_build(out: Path, **kw) -> float:
        t = time.perf_counter()
        build(BuildConfig(input=str(task / "train.jsonl"), model=str(model), out=str(out), workers=args.workers,
                          reuse=False, **kw))
        return time.perf_counter() - t

    timed_build(work / "warmup", max_tokens=64)            # imports and caches, outside every timing
    whole = timed_build(work / "whole")
    shards = [timed_build(work / f"shard{i}", num_shards=args.shards, shard_index=i) for i in range(args.shards)]
    t = time.perf_counter()
    merge([str(work / f"shard{i}") for i in range(args.shards)], work / "merged")
    merged = time.perf_counter() - t

    def rows(out: Path) -> str:
        return json.dumps(datasets.load_from_disk(str(out / "dataset")).to_list()).replace(str(out), "OUT")
    same = rows(work / "whole") == rows(work / "merged")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"records: {args.records}, shards: {args.shards}, workers per build: {args.workers} "
          f"({os.cpu_count()} CPUs, load average {load}); merged == whole: {same}")
    print(f"whole build:                 {whole:7.2f} s")
    print(f"shards, one after another:   {sum(shards):7.2f} s  ({sum(shards) / whole:.2f}x the whole build)")
    print(f"slowest shard + merge:       {max(shards) + merged:7.2f} s  ({(max(shards) + merged) / whole:.2f}x; "
          "the wall time with one machine per shard)")
    print(f"merge alone:                 {merged:7.2f} s  ({merged / whole:.2f}x)")


if __name__ == "__main__":
    main()
