"""`qvq-tune data build | merge | pairs | summary`: turn your files into a validated, rendered
training dataset, in one go or as shards built in parallel and merged; sample preference pairs
from a model; print what a run or an export was trained on."""

from __future__ import annotations

import dataclasses
import sys

HELP = ("build a training dataset from JSON/JSONL/parquet/arrow/HF folders (validate, quarantine, render), "
        "or preference pairs from a model's own sampled replies")


def add_parser(sub) -> None:
    from ..data.build import BuildConfig
    from .args import add_dataclass_arguments

    p = sub.add_parser("data", help=HELP, description=HELP)
    s = p.add_subparsers(dest="data_command", metavar="ACTION")
    b = s.add_parser("build", help="validate, render and cache a dataset for training",
                     description="Read records, quarantine bad ones (OUT/quarantine.jsonl), render the "
                                 "rest with the model's processor and chat template into OUT/dataset "
                                 "(and OUT/preference for DPO pairs), and write OUT/report.json.")
    add_dataclass_arguments(b, BuildConfig)
    jobs = b.add_argument_group("Slurm (with --num-shards N)")
    jobs.add_argument("--slurm", action="store_true",
                      help="instead of building, write OUT.shards/build.sbatch (an array job, one task per "
                           "shard) and OUT.shards/merge.sbatch (joins them into OUT), and print how to submit them")
    jobs.add_argument("--partition", metavar="P", help="Slurm partition")
    jobs.add_argument("--time", metavar="T", help="Slurm time limit per task, e.g. 4:00:00")
    b.set_defaults(func=_build)
    m = s.add_parser("merge", help="join the shards of a build (--num-shards N) into one dataset",
                     description="Join the outputs of `data build --num-shards N --shard-index I` (every I "
                                 "once) into OUT: the samples, quarantine and report an unsharded build "
                                 "would have written.")
    m.add_argument("shards", nargs="+", metavar="SHARD_DIR", help="the shards' output folders")
    m.add_argument("--out", required=True, metavar="DIR", help="output folder")
    m.set_defaults(func=_merge)
    t = s.add_parser("summary", help="what a run or an export was trained on, stage by stage",
                     description="Print the training-data summary of a run folder, an export or a model folder "
                                 "(its training_data.json): per stage its objective and, per dataset, records, "
                                 "quarantine reasons, tokens, media, licences, synthetic share and filters.")
    t.add_argument("folder", metavar="RUN_OR_EXPORT", help="a run folder (runs/NAME), an export or a model folder")
    t.add_argument("--json", action="store_true", help="print the machine-readable document instead of a table")
    t.set_defaults(func=_summary)
    _add_pairs(s)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _build(args) -> int:
    from ..data.build import BuildConfig, build
    from ..tiny.resolve import resolve_model_dir
    from .args import dataclass_from_arguments

    config = dataclass_from_arguments(BuildConfig, args)          # validates before any model is built
    if (args.partition or args.time) and not args.slurm:
        from ..errors import UserError
        raise UserError(f"--{'partition' if args.partition else 'time'} needs --slurm", key="slurm")
    config = dataclasses.replace(config, model=str(resolve_model_dir(config.model)))
    if args.slurm:
        return _shard_scripts(config, args)
    report = build(config, log=lambda msg: print(msg, file=sys.stderr), progress=sys.stderr.isatty())
    return _print_outputs(report)


def _shard_scripts(config, args) -> int:
    """A Slurm array that builds each shard of `config` and a job that merges them (README)."""
    from pathlib import Path

    from ..errors import UserError
    from ..slurm import SlurmOptions, python_argv, quote, write_script
    from .args import arguments_from_dataclass

    if config.num_shards < 2:
        raise UserError("--slurm writes an array of shard builds: give --num-shards N (N >= 2)", key="num_shards")
    options = SlurmOptions(partition=args.partition, time=args.time)
    out = Path(config.out).absolute()
    work = out.with_name(out.name + ".shards")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    absolute = dataclasses.replace(config, input=str(Path(config.input).absolute()),
                                   model=str(Path(config.model).absolute()),
                                   image_root=str(Path(config.image_root).absolute()) if config.image_root else None)
    flags = arguments_from_dataclass(absolute, skip=("out", "shard_index"))
    task = '"$SLURM_ARRAY_TASK_ID"'
    build_cmd = quote(python_argv("qvq_tune", "data", "build", *flags))
    build_cmd += f" --shard-index {task} --out {quote([str(work / 'shard-')])}{task}"
    name = f"qvq-data-{out.name}"
    build_script = write_script(
        work / "build.sbatch", about=[f"Written by `qvq-tune data build --slurm`: shard I of {config.num_shards} of "
                                      f"{out}, one array task each; {work / 'merge.sbatch'} joins them."],
        directives={"job-name": name, "array": f"0-{config.num_shards - 1}", "ntasks": 1,
                    **({"cpus-per-task": config.workers} if config.workers else {}), **options.directives(),
                    "output": f"{work}/logs/build-%A_%a.out"},
        body=[f"cd {quote([str(Path.cwd())])}", build_cmd])
    merge_cmd = python_argv("qvq_tune", "data", "merge", *(work / f"shard-{i}" for i in range(config.num_shards)),
                            "--out", out)
    merge_script = write_script(
        work / "merge.sbatch", about=[f"Written by `qvq-tune data build --slurm`: joins the shards into {out}."],
        directives={"job-name": f"{name}-merge", "ntasks": 1, **options.directives(),
                    "output": f"{work}/logs/merge-%j.out"},
        body=[quote(merge_cmd)])
    print(f"build: {build_script}\nmerge: {merge_script}\nsubmit both: ID=$(sbatch --parsable {build_script}) "
          f"&& sbatch --dependency=afterok:$ID {merge_script}")
    return 0


def _add_pairs(s) -> None:
    q = s.add_parser("pairs", help="preference pairs from the model's own sampled replies (for objective: dpo)",
                     description="Sample N replies per prompt of a built dataset, score each as `qvq-tune eval` "
                                 "does, pair a right, concluded, clean reply (chosen) with a wrong, looping, "
                                 "language-mixed or truncated one (rejected), and write OUT/preference (what "
                                 "`objective: dpo` trains on), OUT/pairs.jsonl (each pair's reason), "
                                 "OUT/quarantine.jsonl (prompts without a pair, and why), OUT/samples.jsonl and "
                                 "OUT/report.json. A re-run resumes sampling where it stopped.")
    q.add_argument("--model", help="checkpoint folder, 'tiny' or a family name (with --run: its base)")
    who = q.add_mutually_exclusive_group()
    who.add_argument("--adapter", help="LoRA adapter folder")
    who.add_argument("--run", help="a run folder: its base model, adapter, dtype (QLoRA: the 4-bit base)")
    q.add_argument("--data", required=True, help="a folder written by `qvq-tune data build` (prompts + gold answers)")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder")
    q.add_argument("--samples", type=int, default=8, help="replies sampled per prompt (>= 2)")
    q.add_argument("--temperature", type=float, default=1.0)
    q.add_argument("--max-new-tokens", type=int, default=1024)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--pair-cut", default="none", choices=("none", "divergence", "step"),
                   help="none: whole replies; step / divergence: cut where they first differ (as data build)")
    q.add_argument("--pairs-per-prompt", type=int, default=1, help="most pairs made from one prompt's replies")
    q.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    q.add_argument("--limit", type=int, help="only the first N prompts")
    q.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    q.add_argument("--device", default="auto", help="auto (all GPUs, else CPU), cpu, cuda, cuda:N")
    q.add_argument("--load-in-4bit", action="store_true", help="quantise the base (automatic with --run of QLoRA)")
    q.set_defaults(func=_pairs)


def _pairs(args) -> int:
    from ..eval.pairs import PairsOptions, make_pairs
    from ..tiny.resolve import resolve_model_dir

    opts = PairsOptions(samples=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                        pair_cut=args.pair_cut, pairs_per_prompt=args.pairs_per_prompt, seed=args.seed,
                        batch_size=args.batch_size, limit=args.limit, load_in_4bit=args.load_in_4bit,
                        dtype=args.dtype, device=args.device)
    model = resolve_model_dir(args.model) if args.model else None
    report = make_pairs(args.out, opts, data=args.data, model=model, adapter=args.adapter, run=args.run,
                        log=lambda msg: print(msg, file=sys.stderr))
    for name, path in ((k, v) for k, v in report["outputs"].items() if v):
        print(f"{name}: {path}")
    print(f"report: {report['settings']['out']}/report.json")
    return 0


def _merge(args) -> int:
    from ..data.merge import merge

    report = merge(args.shards, args.out, log=lambda msg: print(msg, file=sys.stderr))
    return _print_outputs(report)


def _summary(args) -> int:
    import json
    from pathlib import Path

    from ..data import training_data as td
    from ..run_folder import RECIPE, RunFolder

    folder = Path(args.folder)
    doc = RunFolder(folder).training_data() if (folder / RECIPE).is_file() else td.read(folder)
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]Training data of {folder.name}[/bold]: {len(doc['stages'])} stage(s)"
                  + (" (paths redacted)" if doc.get("paths_redacted") else ""))
    for s in doc["stages"]:
        table = Table(title=f"stage {s['stage']}: {s.get('name')} ({s.get('objective') or 'objective unknown'}"
                            f"{', ' + s['method'] if s.get('method') else ''}; from {s.get('starts_from') or '?'}"
                            f"; fingerprint {(s.get('fingerprint') or 'not recorded')[:12]})", title_justify="left")
        for column in ("role", "dataset", "records", "kept", "quarantined", "tokens", "images", "licences",
                       "synthetic"):
            table.add_column(column, overflow="fold",
                             justify="right" if column in ("records", "kept", "quarantined", "tokens", "images")
                             else "left")
        for d in s.get("datasets", []):
            table.add_row(d["role"], str(d.get("hub_id") or d.get("name") or d.get("folder") or "-"),
                          _n(d.get("records")), _n(d.get("kept")), _n(d.get("quarantined")), _n(d.get("tokens")),
                          _n(d.get("images")), ", ".join(d.get("licenses") or ["unknown"]),
                          f"{d['synthetic_share']:.0%}" if d.get("synthetic_share") is not None else "?")
        console.print(table)
        if s.get("provenance"):
            console.print(f"  {s['provenance']}")
        for d in s.get("datasets", []):
            reasons = ", ".join(f"{k} {v}" for k, v in (d.get("quarantine_reasons") or {}).items())
            filters = "; ".join(f"{f['filter']} " + ", ".join(f"{k} {f[k]}" for k in ("removed", "changed", "kept")
                                                               if k in f) for f in d.get("filters") or [])
            console.print(f"  {d['role']}: quarantined by reason: {reasons or 'none'}; filters: "
                          f"{filters or 'not recorded'}" + (f"; {d['provenance']}" if d.get("provenance") else ""))
    return 0


def _n(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _print_outputs(report: dict) -> int:
    for name, path in ((k, v) for k, v in report["outputs"].items() if v):
        print(f"{name}: {path}")
    print(f"report: {report['settings']['out']}/report.json")
    return 0
