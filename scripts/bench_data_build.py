"""Benchmark `qvq-tune data build` against a hand-rolled per-record processor loop.

Writes a synthetic native-JSONL task (N records with PNG images), then, in one run:
- our builder (`data.build.build`) with --workers W and with 1 worker: parse, check and
  hash every image, render with the chat template, write the Arrow dataset, report;
- a plain loop, as a hand-written TRL-style script would do it: per record
  `processor.apply_chat_template(messages)` then `processor(text=..., images=[PIL])`,
  keeping the input_ids in memory (no dataset written, no validation).
Prints records/second for each, the ratio, and whether both give identical input_ids.

    python scripts/bench_data_build.py --records 3000 [--image-size 448] [--workers N]

The plain loop's speed depends heavily on other load on the machine (its torch threads
suffer most from contention), so the load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def plain_loop(processor, records: list[dict], root: Path, reasoning: str) -> list[list[int]]:
    from PIL import Image

    from qvq_tune.data.reasoning import format_reply

    out = []
    for rec in records:
        messages = [
            {"role": "user", "content": [*({"type": "image"} for _ in rec["images"]),
                                         {"type": "text", "text": rec["question"]}]},
            {"role": "assistant", "content": format_reply(rec.get("reasoning"), rec["answer"], reasoning)},
        ]
        text = processor.apply_chat_template(messages, tokenize=False)
        images = [Image.open(root / p).convert("RGB") for p in rec["images"]]
        enc = processor(text=[text], images=images, return_tensors="pt")
        out.append(enc["input_ids"][0].tolist())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--family", default="qwen2_vl")
    ap.add_argument("--image-size", type=int, default=112, help="side of the synthetic PNG images")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--work-dir", help="keep files here (default: a temporary folder)")
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="qvq-bench-"))
    try:
        run(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.models.detect import detect
    from qvq_tune.models.loading import load_processor
    from qvq_tune.tiny.zoo import build_tiny
    from qvq_tune.synth.generate import SynthConfig, generate

    task, model = work / f"task-{args.records}-{args.image_size}", work / f"tiny-{args.family}"
    if not (task / "train.jsonl").is_file():
        generate(SynthConfig(train=args.records, validation=0, test=0, dpo=False, image_size=args.image_size),
                 task, progress=False)
    if not (model / "config.json").is_file():
        build_tiny(args.family, model)
    records = [json.loads(line) for line in (task / "train.jsonl").read_text().splitlines()][: args.records]
    reasoning = detect(model).reasoning_style
    # imports and warm-up (transformers, datasets, matplotlib), outside every timing
    processor = load_processor(model)
    plain_loop(processor, records[:5], task, reasoning)
    warm = task / "warmup.jsonl"
    warm.write_text("".join(json.dumps(r) + "\n" for r in records[:20]))
    build(BuildConfig(input=str(warm), model=str(model), out=str(work / "out-warmup"), workers=1, reuse=False))

    results = {}
    for workers in sorted({args.workers, 1}, reverse=True):
        out = work / f"out-w{workers}"
        t = time.perf_counter()
        report = build(BuildConfig(input=str(task / "train.jsonl"), model=str(model), out=str(out),
                                   workers=workers, reuse=False))
        results[workers] = (time.perf_counter() - t, report, out)
    t = time.perf_counter()
    plain_ids = plain_loop(processor, records, task, reasoning)
    plain_s = time.perf_counter() - t

    import datasets
    n = len(records)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"records: {n} ({args.family}, {args.image_size}x{args.image_size} PNG images, "
          f"{os.cpu_count()} CPUs, load average {load})")
    for workers, (secs, report, out) in results.items():
        built = datasets.load_from_disk(str(out / "dataset"))["input_ids"]
        same = built == plain_ids
        print(f"builder, {workers} worker(s): {secs:7.2f} s  {n / secs:8.1f} records/s  "
              f"kept {report['kept']}/{report['input_records']}  identical input_ids: {same}  "
              f"speed-up vs plain: {plain_s / secs:.1f}x")
    print(f"plain per-record processor loop: {plain_s:7.2f} s  {n / plain_s:8.1f} records/s")


if __name__ == "__main__":
    main()
