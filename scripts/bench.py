"""qvq-tune against the plain way, side by side in one run, ratios printed.

    python scripts/bench.py [--quick] [--json FILE] [--skip-zero3]
    python scripts/bench.py --peer ms-swift [--quick] [--json FILE]    # against ms-swift
    python scripts/bench.py --gpu [--json FILE]          # on a CUDA machine

CPU (the tiny qwen2_vl of the zoo, the demo's task and settings: QLoRA NF4, LoRA r=16 on the
language model's projections, fp32, batch 8, the same steps on both sides):
1. dataset build: records/s of `data build` against a plain per-record processor loop
   (`apply_chat_template` + `processor(text, images)`), same records, identical token ids;
2. training: non-padding tokens/s and peak resident memory of qvq-tune's SFT against a plain
   TRL `SFTTrainer` script (`scripts/trl_baseline.py`: TRL's defaults) on the same records,
   single process and 2-process DeepSpeed ZeRO-3 for both; each side in its own processes;
3. padding: the share of padded positions in batches of traces whose lengths follow a
   long-tailed (log-normal) spread from tens to a few thousand tokens, padded vs packed,
   and the training tokens/s of each on that data;
4. planner: `qvq-tune plan`'s estimate for run 2's configuration against its measured peak
   (the planner is given the measured footprint of the runtime before the model loads).

`--peer ms-swift`: the same training comparisons against ms-swift (`bench_peers.py`: pinned, in its
own virtual environment under the qvq-tune cache, installed on first use; skipped with the reason
when it cannot be): padded single process, spread-length traces (our packing vs its best), 2-process
ZeRO-3 with the same DeepSpeed JSON, QLoRA; the records' input ids are checked identical.

`--gpu` (a CUDA machine): a Qwen2-VL-2B-shaped model with random weights in bf16, LoRA and
QLoRA, padded and packed, with and without Liger kernels: tokens/s, MFU, peak GPU memory,
and the planner against the measured peak.

`--json FILE` writes every figure, including `data_build_speedup`, `train_tokens_per_s_ratio`,
`peak_memory_ratio`, `padding_waste_unpacked`, `padding_waste_packed`, `planner_relative_error`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---- data ------------------------------------------------------------------------------------
def synth(work: Path, n: int, *, spread: bool, seed: int = 0, image_size: int = 112) -> Path:
    """The demo's task (n records); with `spread`, each trace repeats its steps a log-normal
    number of times so lengths run from tens to a few thousand tokens."""
    from qvq_tune.synth.generate import SynthConfig, generate
    out = work / f"task-{n}-{'spread' if spread else 'plain'}-{image_size}"
    if not (out / "train.jsonl").is_file():
        generate(SynthConfig(train=n, validation=0, test=0, dpo=False, seed=seed, image_size=image_size), out,
                 progress=False)
        if spread:
            rng = random.Random(seed)
            rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
            for r in rows:
                repeats = max(1, min(120, int(math.exp(rng.gauss(1.2, 1.2)))))
                r["reasoning"] = " ".join([r["reasoning"]] * repeats)
            (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def build(task: Path, model: Path, out: Path, workers: int = 1) -> dict:
    from qvq_tune.data.build import BuildConfig, build as run_build
    return run_build(BuildConfig(input=str(task / "train.jsonl"), model=str(model), out=str(out),
                                 reasoning="qvq", workers=workers, reuse=False))


def bench_data_build(work: Path, model: Path, records: int) -> dict:
    from bench_data_build import plain_loop

    from qvq_tune.models.loading import load_processor
    task = synth(work, records, spread=False)
    rows = [json.loads(line) for line in (task / "train.jsonl").read_text().splitlines()]
    processor = load_processor(model)
    plain_loop(processor, rows[:5], task, "qvq")                  # warm-ups outside the timings (imports,
    warm = task / "warmup.jsonl"                                   # first processor load) on both sides
    warm.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    from qvq_tune.data.build import BuildConfig, build as run_build
    run_build(BuildConfig(input=str(warm), model=str(model), out=str(work / "built-warmup"), workers=1, reuse=False))
    workers = min(2, os.cpu_count() or 1)
    t = time.perf_counter()
    report = build(task, model, work / "built-data-bench", workers=workers)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    plain_ids = plain_loop(processor, rows, task, "qvq")
    plain = time.perf_counter() - t
    import datasets
    same = datasets.load_from_disk(str(work / "built-data-bench" / "dataset"))["input_ids"] == plain_ids
    return {"records": len(rows), "builder_records_per_s": round(len(rows) / ours, 1), "builder_workers": workers,
            "plain_records_per_s": round(len(rows) / plain, 1), "identical_input_ids": same,
            "kept": report["kept"], "data_build_speedup": round(plain / ours, 2)}


# ---- training --------------------------------------------------------------------------------
def ours(work: Path, name: str, model: Path, data: Path, *, steps: int, batch: int, processes: int,
         preset: str, packing: bool = False, method: str = "qlora", dtype: str = "float32",
         extra: dict | None = None) -> dict:
    """qvq-tune's SFT through its CLI (its own processes); returns the run's train_report."""
    sets = {"name": name, "model": str(model), "output_dir": str(work / "runs"), "data.train": str(data),
            "data.packing": packing, "method": method, "dtype": dtype, "optim.max_steps": steps,
            "optim.per_device_batch_size": batch, "optim.logging_steps": 10, "launch.accelerate_config": preset,
            "launch.num_processes": processes, **(extra or {})}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, bool) else v}")]
    out = subprocess.run([sys.executable, "-m", "qvq_tune", "train", "--recipe", "demo_qlora_zero3", "--overwrite",
                          "--json", *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    report = json.loads((work / "runs" / name / "train_report.json").read_text())
    report["tokens_per_s_measured"] = round(report["num_tokens"] / report["train_runtime_s"], 1)
    return report


def trl(work: Path, name: str, model: Path, task: Path, *, steps: int, batch: int, processes: int,
        preset: str, qlora: bool = True, dtype: str = "float32") -> dict:
    """The plain TRL script, alone or under `accelerate launch` with the same preset."""
    from qvq_tune.train.launch import accelerate_command, write_resolved_config
    out_json = work / f"{name}.json"
    script_args = ["--data", str(task / "train.jsonl"), "--model", str(model), "--out", str(out_json),
                   "--steps", str(steps), "--batch", str(batch), "--dtype", dtype] + (["--qlora"] if qlora else [])
    if processes == 1:
        cmd = [sys.executable, str(HERE / "trl_baseline.py"), *script_args]
    else:
        config = write_resolved_config(preset, processes, work / f"{name}-accelerate.yaml")
        cmd = accelerate_command("WORKER", [], config)          # [..., "-m", "WORKER"]: a script instead
        cmd = cmd[:cmd.index("WORKER") - 1] + [str(HERE / "trl_baseline.py"), *script_args]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // processes)))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    result = json.loads(out_json.read_text())
    result["tokens_per_s_measured"] = round(result["num_tokens"] / result["train_runtime_s"], 1)
    return result


def tokens_per_cpu_s(report: dict) -> float | None:
    """Non-padding tokens per CPU second of all ranks in training: on a machine shared with other
    jobs, less sensitive to their load than tokens per wall second."""
    cpu = report.get("train_cpu_seconds")
    return round(report["num_tokens"] / cpu, 1) if cpu else None


def side_by_side(label: str, a: dict, b: dict, peer: str = "trl") -> dict:
    ratio = round(a["tokens_per_s_measured"] / b["tokens_per_s_measured"], 2)
    memory = round(a["peak_rss_mib"] / b["peak_rss_mib"], 2)
    per_cpu = (tokens_per_cpu_s(a), tokens_per_cpu_s(b))
    cpu_ratio = round(per_cpu[0] / per_cpu[1], 2) if all(per_cpu) else None
    say(f"{label}: qvq-tune {a['tokens_per_s_measured']:.0f} tok/s, {a['peak_rss_mib']:.0f} MiB | "
        f"{'plain TRL' if peer == 'trl' else peer} {b['tokens_per_s_measured']:.0f} tok/s, {b['peak_rss_mib']:.0f} MiB "
        f"-> {ratio}x speed, {memory}x memory"
        + (f"; per CPU second {per_cpu[0]:.0f} vs {per_cpu[1]:.0f} tokens -> {cpu_ratio}x" if cpu_ratio else ""))
    return {"qvq_tune": a, peer: b, "tokens_per_s_ratio": ratio, "peak_memory_ratio": memory,
            "tokens_per_cpu_s_ratio": cpu_ratio}


def padding_shares(model: Path, data: Path, batch: int, batches: int = 40) -> dict:
    from qvq_tune.data.collate import VisionCollator
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.models.loading import load_processor
    ds = load_samples(data)
    rng = random.Random(0)
    lengths = ds.data.column("num_tokens").to_pylist()
    padded = real = 0
    for _ in range(batches):
        idx = rng.sample(range(len(ds)), batch)
        padded += batch * max(lengths[i] for i in idx)
        real += sum(lengths[i] for i in idx)
    packed = VisionCollator(load_processor(model), packing=True)([ds[i] for i in range(batch)])
    packed_real = packed["input_ids"].numel()
    return {"lengths": {"min": min(lengths), "p50": sorted(lengths)[len(lengths) // 2],
                        "p95": sorted(lengths)[int(len(lengths) * 0.95)], "max": max(lengths)},
            "padding_waste_unpacked": round(1 - real / padded, 4),
            "padding_waste_packed": round(1 - packed_real / sum(lengths[:batch]), 4)}


def planner_check(model: Path, report: dict, batch: int, seq_len: int, method: str, dtype: str,
                  measured_mib: float, runtime_mib: float | None) -> dict:
    from qvq_tune.train.plan import PlanRequest, plan
    p = plan(PlanRequest(model=str(model), method=method, gpus=1, gpu_mem=1e6, seq_len=seq_len,
                         batch_size=batch, zero=0, dtype=dtype, checkpointing=False, image_pixels=112 * 112,
                         runtime_gb=None if runtime_mib is None else runtime_mib * 2 ** 20 / 1e9))
    measured_gb = measured_mib * 2 ** 20 / 1e9
    return {"planned_gb": p.total_gb, "measured_gb": round(measured_gb, 3), "terms_gb": p.gb,
            "planner_relative_error": round(abs(p.total_gb - measured_gb) / measured_gb, 3)}


# ---- the runs --------------------------------------------------------------------------------
# ZeRO-3 against ms-swift: at least this many steps (its first steps carry one-time costs, DeepSpeed's
# trace and the allocator's first passes), each side twice, in the order A B B A, so a machine whose
# load drifts during the comparison weighs on both sides alike.
ZERO3_MIN_STEPS = 40
ZERO3_ORDER = ("ms_swift", "qvq_tune", "qvq_tune", "ms_swift")


def pooled(reports: list[dict]) -> dict:
    """One side's repeated runs as one: tokens over training time summed, the highest peak memory,
    and each run's own tokens/s."""
    tokens = sum(r["num_tokens"] for r in reports)
    seconds = sum(r["train_runtime_s"] for r in reports)
    cpu = [r.get("train_cpu_seconds") for r in reports]
    return {**reports[-1], "num_tokens": tokens, "train_runtime_s": round(seconds, 3),
            "train_cpu_seconds": round(sum(cpu), 2) if all(cpu) else None,
            "tokens_per_s_measured": round(tokens / seconds, 1),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in reports),
            "runs_tokens_per_s": [r["tokens_per_s_measured"] for r in reports]}


def peer_ms_swift(args, work: Path) -> dict:
    """qvq-tune against ms-swift on the same records (identical input ids checked), LoRA r16 fp32
    (QLoRA NF4 for the last pair), batch 8, the same steps: padded single process; spread-length
    traces, our packing against its best (padding-free where it runs, else padded); 2-process
    ZeRO-3 with the same DeepSpeed JSON (the `zero3` preset's) on both sides (at least 40 steps, each side
    twice, A B B A); QLoRA single process."""
    from bench_peers import PeerUnavailable, ms_swift, ms_swift_python, write_records

    from qvq_tune import presets
    from qvq_tune.tiny.zoo import build_tiny
    try:
        python = ms_swift_python(Path(args.peer_cache), say)
    except PeerUnavailable as exc:
        say(f"skipping the ms-swift peer: {exc}")
        return {"skipped": str(exc)}
    model = build_tiny("qwen2_vl", work / "tiny-qwen2_vl")
    steps = 20 if args.quick else 100
    zero3_json = presets.folder(presets.ACCELERATE) / "zero3.json"
    results: dict = {"machine": {"cpus": os.cpu_count(), "load": [round(x, 1) for x in os.getloadavg()]},
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "steps": steps, "batch": 8,
                     "deepspeed_json": str(zero3_json)}
    task = synth(work, 600, spread=False)
    build(task, model, work / "built-train")
    data, expected = write_records(task, work / "built-train", work / "peer")
    peer = work / "peer"

    say("ms-swift 1/4 padded, one process (LoRA r16 fp32)")
    theirs = ms_swift(python, peer, "swift-single", model, data, expected, steps=steps, batch=8, processes=1)
    results["identical_input_ids"] = theirs["identical_input_ids"]
    if theirs["identical_input_ids"]["differ"]:
        say(f"warning: {theirs['identical_input_ids']['differ']} records encode differently in ms-swift")
    mine = ours(work, "ours-single-lora", model, work / "built-train", steps=steps, batch=8, processes=1,
                preset="single", method="lora")
    results["padded_single"] = side_by_side("padded, one process", mine, theirs, "ms_swift")

    say("ms-swift 2/4 spread-length traces: our packing vs its best")
    spread = synth(work, 400, spread=True, seed=1)
    build(spread, model, work / "built-spread")
    spread_data, _ = write_records(spread, work / "built-spread", work / "peer-spread")
    try:
        theirs = ms_swift(python, peer, "swift-spread-padding-free", model, spread_data, None, steps=steps // 2,
                          batch=8, processes=1, padding_free=True)
        how = "padding-free"
    except RuntimeError as exc:
        say(f"ms-swift cannot run padding-free here ({str(exc).strip().splitlines()[-1][:200]}); its padded run")
        theirs = ms_swift(python, peer, "swift-spread-padded", model, spread_data, None, steps=steps // 2, batch=8,
                          processes=1)
        how = "padded"
    mine = ours(work, "ours-spread-packed", model, work / "built-spread", steps=steps // 2, batch=8, processes=1,
                preset="single", method="lora", packing=True)
    results["packed_vs_best"] = {**side_by_side(f"spread traces, our packing vs its {how}", mine, theirs,
                                                "ms_swift"), "ms_swift_mode": how}

    zero3_steps = max(ZERO3_MIN_STEPS, steps // 2)
    say(f"ms-swift 3/4 2-process ZeRO-3, the same DeepSpeed JSON ({zero3_steps} steps, runs in the order "
        f"{' '.join(ZERO3_ORDER)})")
    runs: dict[str, list[dict]] = {"ms_swift": [], "qvq_tune": []}
    for i, side in enumerate(ZERO3_ORDER):
        if side == "ms_swift":
            runs[side].append(ms_swift(python, peer, f"swift-zero3-{i}", model, data, None, steps=zero3_steps,
                                       batch=8, processes=2, deepspeed=zero3_json))
        else:
            runs[side].append(ours(work, f"ours-zero3-lora-{i}", model, work / "built-train", steps=zero3_steps,
                                   batch=8, processes=2, preset="zero3", method="lora"))
    mine, theirs = pooled(runs["qvq_tune"]), pooled(runs["ms_swift"])
    results["zero3"] = side_by_side("2-process ZeRO-3 (same JSON)", mine, theirs, "ms_swift")
    results["zero3"].update(steps=zero3_steps, order=list(ZERO3_ORDER),
                            qvq_tune_partition=runs["qvq_tune"][-1].get("zero3_partition"))

    say("ms-swift 4/4 QLoRA NF4, one process")
    theirs = ms_swift(python, peer, "swift-qlora", model, data, None, steps=steps, batch=8, processes=1, qlora=True)
    mine = ours(work, "ours-single-qlora", model, work / "built-train", steps=steps, batch=8, processes=1,
                preset="single", method="qlora")
    results["qlora_single"] = side_by_side("QLoRA, one process", mine, theirs, "ms_swift")
    results["summary"] = {f"{key}_tokens_per_s_ratio": results[key]["tokens_per_s_ratio"]
                          for key in ("padded_single", "packed_vs_best", "zero3", "qlora_single")}
    results["summary"].update({f"{key}_peak_memory_ratio": results[key]["peak_memory_ratio"]
                               for key in ("padded_single", "packed_vs_best", "zero3", "qlora_single")})
    results["summary"].update({f"{key}_tokens_per_cpu_s_ratio": results[key]["tokens_per_cpu_s_ratio"]
                               for key in ("padded_single", "packed_vs_best", "zero3", "qlora_single")})
    return results


def cpu(args, work: Path) -> dict:
    from qvq_tune.tiny.zoo import build_tiny
    model = build_tiny("qwen2_vl", work / "tiny-qwen2_vl")
    steps = 20 if args.quick else 200
    results: dict = {"machine": {"cpus": os.cpu_count(), "load": [round(x, 1) for x in os.getloadavg()]}}

    say("1/4 dataset build vs a plain per-record processor loop")
    results["data_build"] = bench_data_build(work, model, 300 if args.quick else 1500)

    say("2/4 training: qvq-tune SFT vs a plain TRL SFTTrainer script")
    task = synth(work, 600, spread=False)
    build(task, model, work / "built-train")
    single = side_by_side("single process", ours(work, "ours-single", model, work / "built-train", steps=steps,
                                                  batch=8, processes=1, preset="single"),
                          trl(work, "trl-single", model, task, steps=steps, batch=8, processes=1, preset="single"))
    results["train_single"] = single
    if not args.skip_zero3:
        results["train_zero3"] = side_by_side(
            "2-process ZeRO-3", ours(work, "ours-zero3", model, work / "built-train", steps=steps // 2, batch=8,
                                     processes=2, preset="zero3"),
            trl(work, "trl-zero3", model, task, steps=steps // 2, batch=8, processes=2, preset="zero3"))

    say("3/4 padding on long-tailed trace lengths, padded vs packed")
    spread = synth(work, 400, spread=True, seed=1)
    build(spread, model, work / "built-spread")
    shares = padding_shares(model, work / "built-spread", batch=8)
    padded = ours(work, "spread-padded", model, work / "built-spread", steps=steps // 2, batch=8, processes=1,
                  preset="single", method="lora")
    packed = ours(work, "spread-packed", model, work / "built-spread", steps=steps // 2, batch=8, processes=1,
                  preset="single", method="lora", packing=True)
    shares.update(train_padding_share_padded=padded["padding_share"], train_padding_share_packed=packed["padding_share"],
                  tokens_per_s_padded=padded["tokens_per_s_measured"], tokens_per_s_packed=packed["tokens_per_s_measured"],
                  packing_speedup=round(packed["tokens_per_s_measured"] / padded["tokens_per_s_measured"], 2))
    results["padding"] = shares
    say(f"padding waste {shares['padding_waste_unpacked']:.1%} padded -> {shares['padding_waste_packed']:.1%} packed; "
        f"training {shares['tokens_per_s_padded']:.0f} -> {shares['tokens_per_s_packed']:.0f} tok/s")

    say("4/4 planner vs measured peak")
    mine = single["qvq_tune"]
    seq = round(mine["num_tokens"] / (mine["steps"] * 8))
    results["planner"] = planner_check(model, mine, 8, seq, "qlora", "float32", mine["peak_rss_mib"],
                                       mine["rss_before_model_mib"])
    return results


def summary(results: dict) -> dict:
    out = {"data_build_speedup": results["data_build"]["data_build_speedup"],
           "train_tokens_per_s_ratio": results["train_single"]["tokens_per_s_ratio"],
           "peak_memory_ratio": results["train_single"]["peak_memory_ratio"],
           "padding_waste_unpacked": results["padding"]["padding_waste_unpacked"],
           "padding_waste_packed": results["padding"]["padding_waste_packed"],
           "planner_relative_error": results["planner"]["planner_relative_error"]}
    if "train_zero3" in results:
        out["train_tokens_per_s_ratio_zero3"] = results["train_zero3"]["tokens_per_s_ratio"]
        out["peak_memory_ratio_zero3"] = results["train_zero3"]["peak_memory_ratio"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer records and steps")
    ap.add_argument("--skip-zero3", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="the GPU benchmark (a CUDA machine)")
    ap.add_argument("--peer", choices=["trl", "ms-swift"], default="trl",
                    help="the toolkit to compare with: a plain TRL script (default, with the data-build, "
                         "padding and planner checks) or ms-swift (installed into its own environment)")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--work-dir", help="keep files here (default: a temporary folder)")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="qvq-bench-"))
    from qvq_tune.paths import cache_dir
    args.peer_cache = str(cache_dir())          # the peer's environment outlives the run's own cache
    os.environ.setdefault("QVQ_TUNE_CACHE", str(work / "cache"))
    try:
        if args.gpu:
            from bench_gpu import gpu
            results = gpu(args, work)
        elif args.peer == "ms-swift":
            started = time.time()
            results = peer_ms_swift(args, work)
            results["wall_seconds"] = round(time.time() - started)
            print(json.dumps(results.get("summary", results), indent=2))
        else:
            results = cpu(args, work)
            results["summary"] = summary(results)
            print(json.dumps(results["summary"], indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
