"""A user's model shape on CPU, end to end: the memory, dtype and shape mistakes a ~1M-parameter
test model cannot show.

    python scripts/real_shape.py --shape qwen2_vl-2b --json out.json      # ~20 GB RAM, a quiet machine
    python scripts/real_shape.py --shape qwen2_5_vl-3b --json out.json
    python scripts/real_shape.py --shape qwen2_vl-2b --layers 2 --vision-depth 2   # the same path, smaller

Random weights in the real architecture (`scripts/bench_gpu.py`'s `sized_model`: every width and
the 151k vocabulary at full size, bf16 on disk), with the tiny zoo's tokenizer and processor.
Each stage runs as a user runs it, through the CLI in its own processes:

  model   the checkpoint written (random weights)
  build   448 x 448 diagrams (256 image tokens) with reasoning traces of 1-2k tokens (SFT
          samples) and preference pairs whose replies hold half that each (two rows per pair:
          a DPO step then scores as many tokens as an SFT step); one 1000 x 1000 diagram at
          --max-pixels 1003520 (1,225 image tokens) for evaluation
  sft     QLoRA (nf4, r 16) for 2 steps, 2 processes under DeepSpeed ZeRO-3, activation
          checkpointing, batch 1, fp32 compute (bf16 matrix multiplies are many times slower
          on a CPU without native bf16)
  dpo     2 steps from the SFT adapter, the same launch
  eval    greedy replies on the 1000 x 1000 diagram and two training diagrams (4-bit base +
          the DPO adapter, as trained)
  export  the streamed merge (bf16) with its proof on two training samples

Per stage it prints and writes (`--json FILE`): seconds; peak memory per process, from /proc
every 0.2 s (VmHWM, the kernel's exact resident peak, and the largest anonymous and
file-backed resident parts seen: a memory-mapped checkpoint counts in the resident size but
is page cache the kernel can drop); the planner's figure for the same settings
(`train.plan`: its CPU terms); what broke, if anything.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

GB = 1e9
TRAIN_PIXELS = 448 * 448                  # 256 image tokens
EVAL_PIXELS = 1003520                     # up to 1280 image tokens
TRACE_TOKENS = (1000, 2000)


def say(msg: str) -> None:
    print(f"[real-shape] {msg}", file=sys.stderr, flush=True)


# ---- memory of a stage's processes --------------------------------------------------------
class Peaks:
    """Samples every process under `root` (itself included) from /proc until stopped: per pid,
    the kernel's peak resident size (VmHWM) and the largest anonymous / file-backed parts seen."""

    FIELDS = {"VmHWM": "peak_rss", "RssAnon": "anon", "RssFile": "file"}

    def __init__(self, root: int, every: float = 0.2):
        self.root, self.every = root, every
        self.seen: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.time()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        import psutil
        while not self._stop.is_set():
            try:
                procs = [psutil.Process(self.root)]
                procs += procs[0].children(recursive=True)
            except psutil.Error:
                procs = []
            for proc in procs:
                self._sample(proc)
            self._stop.wait(self.every)

    def _sample(self, proc) -> None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            cmd = " ".join(proc.cmdline())
            rank = proc.environ().get("RANK") if "qvq_tune.train.worker" in cmd else None
        except (OSError, Exception):     # the process ended between listing and reading
            return
        values = {}
        for line in status.splitlines():
            key, _, rest = line.partition(":")
            if key in self.FIELDS:
                values[self.FIELDS[key]] = int(rest.split()[0]) * 1024
        entry = self.seen.setdefault(proc.pid, {"role": f"rank {rank}" if rank is not None else _role(cmd),
                                                "timeline": []})
        for key, value in values.items():
            entry[key] = max(entry.get(key, 0), value)
        now = round(time.time() - self.started)
        if not entry["timeline"] or entry["timeline"][-1][0] < now:      # anonymous GB, once a second
            entry["timeline"].append((now, round(values.get("anon", 0) / GB, 2)))

    def summary(self) -> dict:
        """The processes that held memory (over 200 MB), largest first, in GB."""
        rows = [{"role": e["role"], **{k: round(e.get(k, 0) / GB, 2) for k in ("peak_rss", "anon", "file")},
                 "anon_timeline": e["timeline"]} for e in self.seen.values() if e.get("peak_rss", 0) > 0.2 * GB]
        return {"processes": sorted(rows, key=lambda r: -r["peak_rss"]),
                "peak_rss_gb": max((r["peak_rss"] for r in rows), default=None),
                "peak_anon_gb": max((r["anon"] for r in rows), default=None)}


def _role(cmd: str) -> str:
    for needle, role in (("accelerate.commands.launch", "launcher"), ("torch.distributed", "launcher"),
                         ("qvq_tune", "main")):
        if needle in cmd:
            return role
    return "other"


def run_stage(name: str, argv: list[str], results: dict, plan: dict | None = None, env: dict | None = None,
              timeout: float = 3600) -> bool:
    """Run one stage's command; record seconds, memory per process, the plan and any failure."""
    say(f"{name}: {' '.join(map(str, argv))[:300]}")
    started = time.time()
    proc = subprocess.Popen(list(map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    tail: list[str] = []
    with Peaks(proc.pid) as peaks:
        for line in proc.stdout:
            tail = (tail + [line])[-30:]
        code = proc.wait(timeout=timeout)
    row = {"seconds": round(time.time() - started, 1), **peaks.summary(), "planned": plan, "error": None}
    if code != 0:
        row["error"] = "".join(tail)[-2500:]
    results["stages"][name] = row
    say(f"{name}: {row['seconds']} s, peak RSS per process {row['peak_rss_gb']} GB"
        + (f", FAILED:\n{row['error']}" if code else ""))
    return code == 0


# ---- data ----------------------------------------------------------------------------------
def long_traces(raw: Path, tokens_per_char: float, seed: int, span: tuple[int, int] = TRACE_TOKENS) -> None:
    """Repeat each trace until it holds `span` tokens (1-2k), each preference reply until it
    holds half that (a pair is two rows: its tokens are then those of one trace)."""
    rng = random.Random(seed)
    for name, keys, share in (("train.jsonl", (None,), 1), ("dpo_train.jsonl", ("chosen", "rejected"), 2)):
        rows = [json.loads(line) for line in (raw / name).read_text().splitlines()]
        for r in rows:
            target = rng.randint(*span) // share
            for key in keys:
                reply = r if key is None else r[key]
                text = reply["reasoning"]
                reply["reasoning"] = " ".join([text] * max(1, round(target / (len(text) * tokens_per_char))))
        (raw / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def qvq(*args) -> list[str]:
    return [sys.executable, "-m", "qvq_tune", *map(str, args)]


def zero3_config(work: Path, max_live: float) -> str:
    """The zero3 preset, or a copy beside the work folder whose live-parameter and reuse
    limits are `max_live` elements (each rank keeps no more than that gathered at once)."""
    if not max_live:
        return "zero3"
    import yaml
    from qvq_tune import presets
    preset = presets.find(presets.ACCELERATE, "zero3")
    accel = yaml.safe_load(preset.read_text())
    ds = json.loads((preset.parent / accel["deepspeed_config"]["deepspeed_config_file"]).read_text())
    ds["zero_optimization"].update(stage3_max_live_parameters=int(max_live), stage3_max_reuse_distance=int(max_live))
    folder = work / "zero3-live"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero3.json").write_text(json.dumps(ds, indent=2))
    accel["deepspeed_config"]["deepspeed_config_file"] = str(folder / "zero3.json")
    (folder / "zero3.yaml").write_text(yaml.safe_dump(accel))
    return str(folder / "zero3.yaml")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="qwen2_vl-2b", help="qwen2_vl-2b or qwen2_5_vl-3b (models/shapes.py)")
    parser.add_argument("--layers", type=int, help="fewer decoder layers (a quick check of the same path)")
    parser.add_argument("--vision-depth", type=int, help="fewer vision blocks (a quick check of the same path)")
    parser.add_argument("--samples", type=int, default=4, help="training samples and preference pairs")
    parser.add_argument("--trace-tokens", type=int, nargs=2, default=TRACE_TOKENS, metavar=("MIN", "MAX"),
                        help="tokens per training trace (default 1000 2000); preference replies get half")
    parser.add_argument("--work", default=None, help="working folder (default: $QVQ_TUNE_CACHE/real-shape)")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--only", help="comma-separated stages to run (sft,dpo,eval,export), reusing the earlier "
                                       "stages' outputs in --work (the model and builds are reused when present)")
    parser.add_argument("--final-run", default="dpo", choices=("dpo", "sft"),
                        help="the run eval and export take (sft: when DPO did not fit, to measure them anyway)")
    parser.add_argument("--lm-head", default="auto", choices=("auto", "fused", "labelled"),
                        help="SFT's loss.lm_head (auto picks TRL's chunked fused head at this vocabulary: "
                             "'labelled' holds a 2k x 151,936 fp32 logits tensor, its softmax and its "
                             "gradient at once, ~1.4 GB each, and was OOM-killed at 10.5 GB per rank)")
    parser.add_argument("--max-live-parameters", type=float, default=1e8,
                        help="ZeRO-3's stage3_max_live_parameters and stage3_max_reuse_distance for the training "
                             "stages (the zero3 preset's 1e9 keeps up to 1e9 gathered elements alive on each rank: "
                             "GPU-sized; 0 keeps the preset)")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None

    def want(stage: str) -> bool:
        return wanted is None or stage in wanted

    from bench_gpu import sized_model

    from qvq_tune.paths import cache_dir
    work = Path(args.work or cache_dir() / "real-shape").absolute()
    work.mkdir(parents=True, exist_ok=True)
    results = {"shape": args.shape, "layers": args.layers, "vision_depth": args.vision_depth,
               "date": time.strftime("%Y-%m-%d"), "machine": machine(), "stages": {}}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))

    # model: its own process, so its memory is measured like every other stage's
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); from pathlib import Path; from bench_gpu import "
            f"sized_model; print(sized_model(Path({str(work)!r}), {args.shape!r}, layers={args.layers}, "
            f"vision_depth={args.vision_depth}))")
    if not run_stage("model", [sys.executable, "-c", code], results):
        return finish(results, save)
    model = sized_model(work, args.shape, layers=args.layers, vision_depth=args.vision_depth)
    from qvq_tune.models.shapes import config_for
    config, _ = config_for(str(model))
    results["model"] = {"path": str(model), "parameters": parameter_counts(model),
                        "text_layers": config.text_config.num_hidden_layers, "vision_depth": config.vision_config.depth,
                        "vocab": config.text_config.vocab_size}

    # build
    from qvq_tune.synth.generate import SynthConfig, generate
    raw = work / f"raw-{args.samples}-{args.trace_tokens[0]}-{args.trace_tokens[1]}"
    if not (raw / "train.jsonl").is_file():
        generate(SynthConfig(train=args.samples, validation=0, test=0, dpo=True, image_size=448), raw, progress=False)
        long_traces(raw, tokens_per_char=0.4, seed=0, span=tuple(args.trace_tokens))
    if not (work / "raw-1000" / "test.jsonl").is_file():
        generate(SynthConfig(train=0, validation=0, test=1, dpo=False, image_size=1000, seed=1), work / "raw-1000",
                 progress=False)
    pixels = ["--min-pixels", TRAIN_PIXELS, "--max-pixels", TRAIN_PIXELS]
    built = {k: work / f"built-{k}" for k in ("sft", "dpo", "eval")}
    ok = run_stage("build", [*qvq("data", "build", "--input", raw / "train.jsonl", "--model", model, "--out",
                                  built["sft"], "--reasoning", "qvq", "--workers", 1, *pixels)], results)
    ok = ok and run_stage("build_dpo", [*qvq("data", "build", "--input", raw / "dpo_train.jsonl", "--model", model,
                                             "--out", built["dpo"], "--reasoning", "qvq", "--workers", 1,
                                             *pixels)], results)
    ok = ok and run_stage("build_1000px", [*qvq("data", "build", "--input", work / "raw-1000" / "test.jsonl",
                                                "--model", model, "--out", built["eval"], "--reasoning", "qvq",
                                                "--workers", 1, "--min-pixels", TRAIN_PIXELS,
                                                "--max-pixels", EVAL_PIXELS)], results)
    if not ok:
        return finish(results, save)
    results["data"] = {k: token_stats(v) for k, v in built.items()}
    save()

    # sft, dpo: one recipe, 2 processes under ZeRO-3
    runs = work / "runs"
    common = {"model": model, "output_dir": runs, "method": "qlora", "dtype": "float32", "lora.r": 16,
              "optim.max_steps": 2, "optim.per_device_batch_size": 1, "optim.grad_accum": 1,
              "optim.gradient_checkpointing": True,
              "optim.logging_steps": 1, "optim.warmup_steps": 0, "optim.lr": 1e-4,
              "launch.accelerate_config": zero3_config(work, args.max_live_parameters), "launch.num_processes": 2}
    sft = {**common, "name": "sft", "objective": "sft", "data.train": built["sft"], "loss.lm_head": args.lm_head}
    dpo = {**common, "name": "dpo", "objective": "dpo", "data.train": built["dpo"], "dpo.start_adapter": runs / "sft"}
    threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}
    for name, sets, kind in (("sft", sft, "sft"), ("dpo", dpo, "dpo")):
        if not want(name):
            continue
        argv = qvq("train", "--recipe", "qlora_single", "--overwrite", "--json",
                   *(a for k, v in sets.items() for a in ("--set", f"{k}={v}")))
        ok = run_stage(name, argv, results, env=threads)
        report = runs / name / "train_report.json"
        if report.is_file():
            r = json.loads(report.read_text())
            results["stages"][name]["report"] = {k: r.get(k) for k in (
                "steps", "train_loss_first", "train_loss_last", "peak_rss_mib", "rss_before_model_mib",
                "zero3_partition", "trainable_parameters", "train_runtime_s", "tokens_per_s")}
            results["stages"][name]["planned"] = planned_training(model, kind, results["data"][kind],
                                                                  r["rss_before_model_mib"] / 1024 * 2 ** 30 / GB)
        save()
        if not ok:
            return finish(results, save)

    # eval: greedy replies, the DPO adapter on the 4-bit base as trained
    if want("eval"):
        run_stage("eval", qvq("eval", "--run", runs / args.final_run, "--data", built["eval"],
                              "--out", work / "eval-1000",
                              "--max-new-tokens", 16, "--batch-size", 1), results, env=threads,
                  plan=planned_eval(model, results["data"]["eval"]["num_tokens"]["max"], EVAL_PIXELS))
        run_stage("eval_448", qvq("eval", "--run", runs / args.final_run, "--data", built["sft"],
                                  "--out", work / "eval-448",
                                  "--max-new-tokens", 16, "--batch-size", 1, "--limit", 2), results, env=threads,
                  plan=planned_eval(model, results["data"]["sft"]["num_tokens"]["max"], TRAIN_PIXELS))
        save()
    # export: the streamed merge and its proof
    if want("export"):
        run_stage("export", qvq("export", "merge", "--run", runs / args.final_run, "--out", work / "merged", "--force",
                                "--dtype", "bf16", "--data", built["sft"], "--samples", 1, "--accept-license",
                                "apache-2.0"), results, env=threads,
                  plan=estimated_export(model, results["data"]["sft"]["num_tokens"]["max"], samples=1))
        proof = work / "merged" / "export_report.json"
        if proof.is_file():
            results["stages"]["export"]["proof"] = json.loads(proof.read_text()).get("proof")
    return finish(results, save)


def finish(results: dict, save) -> int:
    text = table(results)
    save()
    print(text)
    return 0 if all(s["error"] is None for s in results["stages"].values()) else 1


def table(results: dict) -> str:
    """One line per stage: seconds, the largest process's peak resident and anonymous memory,
    the plan and its error against the peak resident size."""
    lines = [f"{results['shape']} (layers {results.get('model', {}).get('text_layers')}, vision depth "
             f"{results.get('model', {}).get('vision_depth')}) on {results['machine']}, {results['date']}",
             f"{'stage':<13}{'seconds':>9}{'peak RSS/proc GB':>18}{'anon GB':>9}{'planned GB':>12}{'plan off':>10}"
             "  error"]
    for name, s in results["stages"].items():
        planned, peak = (s.get("planned") or {}).get("total_gb"), s["peak_rss_gb"]
        s["plan_relative_error"] = round((planned - peak) / peak, 3) if planned and peak else None
        off = f"{s['plan_relative_error']:+.0%}" if s["plan_relative_error"] is not None else "-"
        error = (s["error"] or "").strip().splitlines()[-1:] or [""]
        lines.append(f"{name:<13}{s['seconds']:>9}{peak or '-':>18}{s['peak_anon_gb'] or '-':>9}"
                     f"{planned if planned is not None else '-':>12}{off:>10}  {error[0][:120]}")
    return "\n".join(lines)


def machine() -> str:
    import platform
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {platform.processor() or platform.machine()}"


def parameter_counts(model: Path) -> dict:
    from qvq_tune.train.plan import PlanRequest, plan
    return plan(PlanRequest(model=str(model), method="qlora")).parameters


def token_stats(built: Path) -> dict:
    report = json.loads((built / "report.json").read_text())
    stats = report["stats"].get("sft") or report["stats"].get("preference") or {}
    return {k: stats.get(k) for k in ("num_tokens", "num_vision_tokens", "num_label_tokens", "prompt_tokens",
                                      "chosen_tokens", "rejected_tokens") if stats.get(k)}


def planned_training(model: Path, objective: str, data: dict, runtime_gb: float) -> dict:
    """The planner for the run just measured: its longest sample, batch 1, 2 ranks under ZeRO-3,
    fp32, checkpointing, the runtime baseline the run itself measured before its model loaded."""
    from qvq_tune.train.plan import PlanRequest, plan
    if objective == "dpo":    # each row: the prompt and the longer reply (the shorter is padded)
        seq = data["prompt_tokens"]["max"] + max(data["chosen_tokens"]["max"], data["rejected_tokens"]["max"])
    else:
        seq = data["num_tokens"]["max"]
    p = plan(PlanRequest(model=str(model), method="qlora", objective=objective, gpus=2, zero=3, seq_len=seq,
                         batch_size=1, image_pixels=TRAIN_PIXELS, dtype="float32", checkpointing=True,
                         runtime_gb=round(runtime_gb, 3), device="cpu", gpu_mem=1e6))
    return {"total_gb": p.total_gb, "terms_gb": p.gb, "seq_len": seq}


def planned_eval(model: Path, seq: int, pixels: int) -> dict:
    """The planner has no generation mode; its terms that apply to one process generating with
    the 4-bit base + adapter: the weights, one layer's working set over the prompt (the
    checkpointed figure less the stored layer inputs), the frozen vision tower at these
    pixels, the runtime. (The KV cache of a few hundred tokens and the last position's
    logits are under 0.1 GB here.)"""
    from qvq_tune.train.plan import PlanRequest, plan
    p = plan(PlanRequest(model=str(model), method="qlora", gpus=1, seq_len=seq, batch_size=1, image_pixels=pixels,
                         dtype="float32", checkpointing=True, device="cpu", gpu_mem=1e6))
    terms = {k: p.gb[k] for k in ("weights", "activations", "vision_activations")}
    terms["runtime"] = round(0.9 + 0.08 * sum(terms.values()), 3)
    return {"total_gb": round(sum(terms.values()), 2), "terms_gb": terms, "seq_len": seq,
            "note": "planner terms for inference (qvq-tune plan plans training)"}


def estimated_export(model: Path, seq: int, samples: int) -> dict:
    """No planner term: the streamed merge holds one tensor at a time, but its proof holds one
    fp32 copy of the whole model and full logits (samples x tokens x vocabulary, fp32) of the
    reference, the base, the merged and the 4-bit models, plus two temporaries of that size."""
    from qvq_tune.models.shapes import config_for
    from qvq_tune.train.plan import PlanRequest, plan
    p = plan(PlanRequest(model=str(model), method="full", dtype="float32"))
    params = sum(v for k, v in p.parameters.items() if k in ("language_model", "vision", "merger"))
    config, _ = config_for(str(model))
    logits = samples * seq * config.text_config.vocab_size * 4 / GB
    terms = {"fp32_model": round(params * 4 / GB, 3), "logits_x6": round(6 * logits, 3), "runtime": 0.9}
    return {"total_gb": round(sum(terms.values()), 2), "terms_gb": terms, "seq_len": seq,
            "note": "arithmetic, not qvq-tune plan (it plans training)"}


if __name__ == "__main__":
    raise SystemExit(main())
