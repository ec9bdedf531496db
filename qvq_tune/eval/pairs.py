"""`qvq-tune data pairs`: preference pairs from the model's own sampled replies.

Sample N replies per prompt of a built dataset (the prompts and gold answers `qvq-tune
eval` reads, generated the same way), score each as the evaluator does, pair a right,
concluded, clean reply (chosen) with a wrong or defective one (rejected) per
`eval/pairing.py`, and write the pairs as a `data build` of preference data writes them,
so `objective: dpo` trains on OUT directly:

    OUT/preference/    the pairs (prompt ids + the prompt's media, chosen and rejected ids)
    OUT/pairs.jsonl    one row per pair: its reason, both replies as written, the cut
    OUT/quarantine.jsonl  one row per prompt that gave no pair, with its reason (`NO_PAIR`)
    OUT/samples.jsonl  every scored reply (the eval's rows, plus `prompt_index`)
    OUT/report.json    counts (prompts = prompts with a pair + prompts without, by reason),
                       the replies' metrics, settings, the model the data was built for;
                       written last, so a folder without it holds no finished run

Each reply is kept as the model wrote it: its text, then the end-of-turn token when the
model ended its turn (none when the budget cut it); no reasoning format is applied, so a
reply without a final-answer marker is never rewritten into a boxed answer. `pair_cut`
(`none` | `divergence` | `step`) cuts each pair where the replies first differ, exactly
as `data build --pair-cut` does (`data/reasoning.cut_pair`).

Sampling is resumable: prompts are sampled in chunks, each seeded from `seed` and its
position (so a resumed run samples what an uninterrupted one would) and saved atomically
under `OUT/.sampling/` with the settings' fingerprint; a re-run with the same settings
samples only the missing chunks, and one after a finished run re-pairs its
`samples.jsonl` without sampling (to try another `pair_cut` or `pairs_per_prompt`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..data.dataset import build_report, find_samples, load_samples, processor_settings
from ..data.fingerprint import code_version, file_stats, processor_hash
from ..data.messages import Origin
from ..data.quarantine import QuarantineWriter, quarantine_row
from ..data.reasoning import PAIR_CUTS, cut_pair
from ..data.report import length_histogram, preference_stats
from ..data.kinds import PREFERENCE
from ..data.writers import HISTOGRAM, QUARANTINE, REPORT, SampleWriters, publish_outputs
from ..errors import UserError
from ..paths import write_json_atomic, write_text_atomic
from .evaluate import EvalOptions, dataset_prompts, load_for_eval, resolve_target, score_prompts
from .pairing import NO_PAIR, REJECT_TAGS, pair_replies, reason, reject_tags
from .prompts import prompt_from_sample
from .scoring import summarize

PAIRS, SAMPLES, SAMPLING = "pairs.jsonl", "samples.jsonl", ".sampling"
CHUNK_PROMPTS = 64               # prompts sampled (and saved) together


@dataclass
class PairsOptions:
    samples: int = 8                     # replies per prompt
    temperature: float = 1.0
    max_new_tokens: int = 1024
    pair_cut: str = "none"               # none | divergence | step (data/reasoning.PAIR_CUTS)
    pairs_per_prompt: int = 1
    seed: int = 0
    batch_size: int = 8                  # prompts per generate call (each with `samples` replies)
    limit: int | None = None
    load_in_4bit: bool = False
    dtype: str = "auto"
    device: str = "auto"
    rel_tol: float = 1e-4

    def __post_init__(self):
        if not isinstance(self.samples, int) or self.samples < 2:
            raise UserError("--samples must be at least 2 (a pair needs two replies)", key="samples")
        if self.temperature <= 0:
            raise UserError("--temperature must be > 0 (greedy replies would all be the same)", key="temperature")
        if self.pair_cut not in PAIR_CUTS:
            raise UserError(f"unknown --pair-cut {self.pair_cut!r}; choose from {', '.join(PAIR_CUTS)}",
                            key="pair_cut")
        if not isinstance(self.pairs_per_prompt, int) or self.pairs_per_prompt < 1:
            raise UserError("--pairs-per-prompt must be a positive integer", key="pairs_per_prompt")
        self.eval_options()               # the sampling options check themselves

    def eval_options(self) -> EvalOptions:
        return EvalOptions(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, limit=self.limit,
                           samples=self.samples, temperature=self.temperature, seed=self.seed,
                           load_in_4bit=self.load_in_4bit, dtype=self.dtype, device=self.device,
                           rel_tol=self.rel_tol)


def make_pairs(out_dir: str | Path, opts: PairsOptions, *, data: str | Path, model: str | Path | None = None,
               adapter: str | Path | None = None, run: str | Path | None = None, log=None) -> dict:
    """The `qvq-tune data pairs` flow; returns the report (also OUT/report.json)."""
    log = log or (lambda msg: None)
    started = time.perf_counter()
    out = Path(out_dir).absolute()
    target = resolve_target(model=model, adapter=adapter, run=run, data=data)
    if target.model is None:
        raise UserError("data pairs needs --model (or --run)", key="model")
    source, built = _source_build(Path(data), Path(target.model))
    eopts = opts.eval_options()
    if target.quant and not eopts.load_in_4bit:
        eopts = replace(eopts, **target.quant)          # sample as QLoRA trained it
    settings = {"model": str(target.model), "adapter": str(target.adapter) if target.adapter else None,
                "run": str(run) if run else None, "data": str(source), "source_fingerprint": built.get("fingerprint"),
                **asdict(opts), "load_in_4bit": eopts.load_in_4bit, "out": str(out),
                **processor_settings(source)}
    weights = [Path(p) for p in (target.model, target.adapter) if p]
    fingerprint = _fingerprint({**settings, "weights": file_stats(weights)})
    out.mkdir(parents=True, exist_ok=True)
    previous = _finished_rows(out, fingerprint)
    (out / REPORT).unlink(missing_ok=True)                   # no report = no finished run
    sample_seconds = 0.0
    if previous is None:
        em = load_for_eval(target.model, target.adapter, eopts, processor_settings=processor_settings(source),
                           run_dtype=target.run_dtype)
        prompts = dataset_prompts(em, source, opts.limit)
        t0 = time.perf_counter()
        rows = _sample(em, prompts, eopts, out / SAMPLING, fingerprint, log)
        sample_seconds = time.perf_counter() - t0
        prefix, family, tokenizer = em.prefix, em.family, em.processor.tokenizer
        del em
    else:
        log(f"samples unchanged: re-pairing {out / SAMPLES} without sampling")
        rows, (prefix, family, tokenizer) = previous, _text_side(target.model)
    write_text_atomic(out / SAMPLES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    report = _write_pairs(out, rows, load_samples(source), opts, prefix, family, tokenizer)
    report.update(replies=summarize(rows), settings=settings, model=built["model"], fingerprint=fingerprint,
                  code_version=code_version(), sampled=previous is None, sampling_seconds=round(sample_seconds, 1),
                  seconds=round(time.perf_counter() - started, 1))
    write_json_atomic(out / REPORT, report)
    shutil.rmtree(out / SAMPLING, ignore_errors=True)
    log(summary_line(report))
    return report


def summary_line(report: dict) -> str:
    why = ", ".join(f"{k} {v}" for k, v in report["prompts_without_pair"].items() if v)
    return (f"{report['prompts']} prompts = {report['prompts_with_pair']} with a pair + "
            f"{sum(report['prompts_without_pair'].values())} without ({why or 'none'}); "
            f"{report['pairs']} pairs; sampled accuracy {report['replies']['accuracy']}")


# ---- inputs --------------------------------------------------------------------------------
def _source_build(data: Path, model_dir: Path) -> tuple[Path, dict]:
    """The built SFT samples to prompt with, and their build report (checked against the model)."""
    source = find_samples(data)
    if source is None:
        raise UserError("--data must be a folder written by `qvq-tune data build` (SFT samples: the prompts "
                        "and their gold answers)", path=str(data))
    built = build_report(source)
    if built is None:
        raise UserError("no report.json beside the samples, so the model they were built for is unknown; "
                        "rebuild them", path=str(data))
    if built.get("model", {}).get("processor_hash") != processor_hash(model_dir):
        raise UserError(f"built with another tokenizer / processor / chat template ({built['model'].get('path')}) "
                        f"than the model's ({model_dir}); rebuild the data with --model {model_dir}",
                        path=str(data))
    return source, built


def _text_side(model_dir):
    """(generation prefix, family, tokenizer) without loading weights."""
    from ..models.detect import detect
    from ..models.loading import load_processor
    from ..models.registry import get_family
    from .prompts import generation_prefix
    family = get_family(detect(model_dir).family)
    processor = load_processor(model_dir)
    return generation_prefix(processor, family), family, processor.tokenizer


def _fingerprint(settings: dict) -> str:
    """What decides the sampled replies (not how they are paired or where they are written):
    the settings, and the size and mtime of every file of the model and adapter folders."""
    skip = {"pair_cut", "pairs_per_prompt", "out"}
    decisive = {k: v for k, v in sorted(settings.items()) if k not in skip}
    return hashlib.sha256(json.dumps([decisive, CHUNK_PROMPTS], default=str).encode()).hexdigest()


def _finished_rows(out: Path, fingerprint: str) -> list[dict] | None:
    """The scored replies of a finished run with the same sampling settings, else None."""
    try:
        if json.loads((out / REPORT).read_text(encoding="utf-8")).get("fingerprint") != fingerprint:
            return None
        return [json.loads(line) for line in (out / SAMPLES).read_text(encoding="utf-8").splitlines()]
    except (OSError, json.JSONDecodeError):
        return None


# ---- sampling (resumable) ------------------------------------------------------------------
def _sample(em, prompts, eopts: EvalOptions, work: Path, fingerprint: str, log) -> list[dict]:
    """Scored rows of every prompt, chunk by chunk; chunks saved by an earlier run with the
    same fingerprint are read back instead of sampled again."""
    from tqdm import tqdm
    state = work / "settings.json"
    try:
        same = json.loads(state.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_json_atomic(state, {"fingerprint": fingerprint})
    starts = range(0, len(prompts), CHUNK_PROMPTS)
    done = [s for s in starts if (work / f"chunk-{s:08d}.jsonl").is_file()]
    if done:
        log(f"resuming: {len(done)} of {len(starts)} chunks of prompts already sampled in {work}")
    rows: list[dict] = []
    for start in tqdm(starts, desc="data pairs", unit=" chunks", leave=False):
        path = work / f"chunk-{start:08d}.jsonl"
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            continue
        chunk = score_prompts(em, prompts[start:start + CHUNK_PROMPTS], eopts, desc="sample",
                              seed=eopts.seed * 1_000_003 + start, progress=False)
        _number(chunk, start, eopts.samples)
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk))
        rows += chunk
    return rows


def _number(rows: list[dict], start: int, samples: int) -> None:
    for k, row in enumerate(rows):           # rows are prompt-major, `samples` per prompt
        row["prompt_index"] = start + k // samples


# ---- pairs -> the preference dataset -------------------------------------------------------
def _reply_text(row: dict, prefix: str, turn_end: str) -> str:
    """The reply as the model wrote it after the prompt: its text, then the end-of-turn token
    when it ended its turn (none when the token budget cut it)."""
    text = row["reply"][len(prefix):] if row["reply"].startswith(prefix) else row["reply"]
    return text if row["diagnostics"]["hit_budget"] else text + turn_end


def preference_sample(source: dict, prompt_ids: list[int], chosen: str, rejected: str, cut: str,
                      tokenizer) -> tuple[dict, str, list[str]]:
    """A `data build` preference sample (`writers._features("preference")`) of two replies to the
    prompt of the SFT sample `source`, cut per `cut`; also the shared text and the parts."""
    shared, parts = cut_pair(chosen, rejected, cut)
    ids = list(prompt_ids) + (tokenizer(shared, add_special_tokens=False)["input_ids"] if shared else [])
    chosen_ids, rejected_ids = (tokenizer(p, add_special_tokens=False)["input_ids"] for p in parts)
    key = hashlib.sha256(json.dumps([source.get("content_key"), chosen, rejected, cut]).encode()).hexdigest()[:32]
    sample = {"prompt_input_ids": ids, "chosen_input_ids": chosen_ids, "rejected_input_ids": rejected_ids,
              **{k: source.get(k) for k in ("images", "image_grid_thw", "videos", "video_grid_thw")},
              "num_tokens": len(ids) + max(len(chosen_ids), len(rejected_ids)),
              "num_vision_tokens": source.get("num_vision_tokens") or 0,
              **{k: source.get(k) for k in ("id", "source", "line", "index", "record_index")},
              "content_key": key}
    return sample, shared, parts


def _write_pairs(out: Path, rows: list[dict], ds, opts: PairsOptions, prefix: str, family,
                 tokenizer) -> dict:
    """Pair every prompt's replies; write preference/, pairs.jsonl, quarantine.jsonl, lengths.png."""
    by_prompt: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_prompt[row["prompt_index"]].append(row)
    stage = out / f".staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    writers, no_pair, reasons, tags = SampleWriters(stage), Counter(), Counter(), Counter()
    pair_rows: list[str] = []
    try:
        with QuarantineWriter(stage / QUARANTINE) as quarantine:
            for index in sorted(by_prompt):
                replies, source = by_prompt[index], ds[index]
                made = pair_replies(replies, opts.pairs_per_prompt)
                origin = Origin(source["source"] or "", source.get("line"), source.get("index"))
                if made.no_pair:
                    no_pair[made.no_pair] += 1
                    quarantine.write(quarantine_row(origin, made.no_pair, NO_PAIR[made.no_pair],
                                                    _verdicts(source, replies), record_index=index))
                    continue
                prompt_ids = prompt_from_sample(source, tokenizer, family, prefix).batch["input_ids"]
                for k, (good, bad, why) in enumerate(made.pairs):
                    texts = [_reply_text(r, prefix, family.turn_end) for r in (good, bad)]
                    sample, shared, parts = preference_sample(source, prompt_ids, *texts, opts.pair_cut, tokenizer)
                    writers.write(PREFERENCE.name, sample)
                    reasons[reason(why)] += 1
                    tags.update(why)
                    pair_rows.append(json.dumps({
                        "id": source.get("id"), "prompt_index": index, "record_index": source.get("record_index"),
                        "pair": k, "reason": reason(why), "rejected_for": why, "reference": good["reference"],
                        "chosen_sample": good["sample"], "rejected_sample": bad["sample"],
                        "chosen_extracted": good["extracted"], "rejected_extracted": bad["extracted"],
                        "chosen": texts[0], "rejected": texts[1], "cut": opts.pair_cut, "shared": shared,
                        "chosen_part": parts[0], "rejected_part": parts[1]}, ensure_ascii=False) + "\n")
        if not writers.counts[PREFERENCE.name]:
            writers.write_empty(PREFERENCE.name)
        staged = writers.finish()
        write_text_atomic(stage / PAIRS, "".join(pair_rows))
        outputs = publish_outputs(out, stage, staged)
        os.replace(stage / PAIRS, out / PAIRS)
        length_histogram(out / HISTOGRAM, {"preference": staged[PREFERENCE.name].data.column("num_tokens").to_numpy()})
        stats = {"preference": preference_stats(staged[PREFERENCE.name])}
        staged.clear()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    with_pair = len(by_prompt) - sum(no_pair.values())
    return {
        "prompts": len(by_prompt), "prompts_with_pair": with_pair,
        "prompts_without_pair": {k: no_pair[k] for k in NO_PAIR},
        "invariant": "prompts == prompts_with_pair + sum(prompts_without_pair)",
        "pairs": sum(reasons.values()), "kept_preference": sum(reasons.values()), "kept_sft": 0,
        "pair_reasons": dict(reasons.most_common()), "rejected_for": {t: tags[t] for t in REJECT_TAGS if tags[t]},
        "samples_per_prompt": opts.samples, "stats": stats,
        "outputs": {**outputs, "pairs": str(out / PAIRS), "samples": str(out / SAMPLES),
                    "histogram": str(out / HISTOGRAM)},
    }


def _verdicts(source: dict, replies: list[dict]) -> dict:
    """What a prompt without a pair is quarantined with: its id and each reply's verdict."""
    return {"id": source.get("id"), "reference": replies[0]["reference"] if replies else None,
            "replies": [{"sample": r["sample"], "extracted": r["extracted"], "correct": r["correct"],
                         "rejected_for": reject_tags(r)} for r in replies]}
