"""Evaluate a model (optionally with a LoRA adapter or a run folder) by generation.

`run_eval(...)` is the `qvq-tune eval` flow: it reads the run folder when given (base
model, adapter, the processor settings and reasoning format the data was built with),
builds raw data files with the model's own processor when they are not built yet,
loads the model in the requested dtype on the requested device, generates, and writes

    OUT/samples.jsonl   one scored row per reply (eval/scoring.py), real and blank media
    OUT/summary.json    the metrics (recomputable from samples.jsonl) and the settings
    OUT/report.md       the metric table and the worst samples

`load_for_eval` + `evaluate` (or `score_dataset` for rows only) are the same steps for
callers that already hold a model (the demo, the tiny base check).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..data.dataset import is_built, load_samples, processor_settings
from ..errors import UserError
from ..models.detect import detect
from ..models.loading import DTYPES, restore_pixel_limits, set_pixel_limits
from ..models.registry import ModelFamily, get_family
from ..paths import write_json_atomic, write_text_atomic
from ..run_folder import RunFolder
from .generate import generate_replies
from .prompts import Prompt, blank_media, generation_prefix, prompt_from_sample
from .report import markdown_report
from .scoring import score_reply, summarize

SAMPLES, SUMMARY, REPORT = "samples.jsonl", "summary.json", "report.md"
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


@dataclass
class EvalOptions:
    max_new_tokens: int = 8192           # QVQ-72B-Preview's model card generates with 8192
    batch_size: int = 8
    limit: int | None = None
    blank_images: bool = False           # also score every sample with blank images and video frames
    samples: int = 1                     # replies per prompt (sampled when > 1)
    temperature: float = 0.0
    seed: int = 0
    load_in_4bit: bool = False
    quant_type: str = "nf4"              # with load_in_4bit (a run's recipe sets both, `Recipe.loading`)
    double_quant: bool = True
    dtype: str = "auto"                  # auto: the run's dtype, else bfloat16 on a GPU, float32 on CPU
    device: str = "auto"                 # auto: every visible GPU (device_map="auto"), else CPU
    rel_tol: float = 1e-4                # numeric answers match within this relative tolerance
    tools: str | None = None             # a Python file of tool functions: run the tool loop (eval/tools.py)
    max_tool_turns: int = 4              # replies per prompt in the tool loop, the last one included
    tool_timeout: float = 10.0           # seconds per tool call

    def __post_init__(self):
        for key in ("max_new_tokens", "batch_size", "samples"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise UserError(f"--{key.replace('_', '-')} must be a positive integer", key=key)
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be a positive integer", key="limit")
        if self.temperature < 0:
            raise UserError("--temperature must be >= 0", key="temperature")
        if self.samples > 1 and self.temperature == 0:
            raise UserError("--samples N > 1 needs --temperature T > 0 (greedy replies would all be the same)",
                            key="samples")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise UserError(f"--dtype must be auto or one of {', '.join(DTYPES)}", key="dtype")
        if self.tools is not None and self.samples > 1:
            raise UserError("--tools runs one reply per prompt; leave --samples at 1", key="samples")
        if not isinstance(self.max_tool_turns, int) or self.max_tool_turns < 1:
            raise UserError("--max-tool-turns must be a positive integer", key="max_tool_turns")
        if self.tool_timeout <= 0:
            raise UserError("--tool-timeout must be > 0 seconds", key="tool_timeout")
        if self.quant_type not in ("nf4", "fp4"):
            raise UserError("--quant-type must be nf4 or fp4", key="quant_type")
        if not DEVICE.match(self.device):
            raise UserError(f"--device {self.device!r}: use auto, cpu, cuda, cuda:N or mps", key="device")


@dataclass
class EvalModel:
    """A model ready to generate: weights (+ adapter), its processor and its family."""
    model: object
    processor: object
    family: ModelFamily
    prefix: str = ""                     # what the chat template writes after the assistant header
    info: dict = field(default_factory=dict)
    pixel_defaults: dict = field(default_factory=dict)   # the checkpoint's own limits, restored per dataset


def _placement(opts: EvalOptions, run_dtype: str | None) -> tuple[str, object]:
    import torch
    gpu = torch.cuda.is_available()
    dtype = opts.dtype if opts.dtype != "auto" else (run_dtype or ("bfloat16" if gpu else "float32"))
    if opts.device == "auto":
        return dtype, "auto" if gpu else None
    return dtype, None if opts.device == "cpu" else {"": opts.device}


def load_for_eval(model_dir: str | Path, adapter: str | Path | None, opts: EvalOptions, *,
                  processor_settings: dict | None = None, run_dtype: str | None = None) -> EvalModel:
    from ..models.loading import load_model, load_processor
    from ..models.loading import processor_pixel_limits
    family = get_family(detect(model_dir).family)
    processor = load_processor(model_dir)
    pixel_defaults = processor_pixel_limits(processor)
    set_pixel_limits(processor, **(processor_settings or {}))
    dtype, device_map = _placement(opts, run_dtype)
    model = load_model(model_dir, dtype=dtype, load_in_4bit=opts.load_in_4bit, quant_type=opts.quant_type,
                       double_quant=opts.double_quant, device_map=device_map)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    info = {"model": str(model_dir), "adapter": str(adapter) if adapter else None, "dtype": dtype,
            "device": str(model.device), "load_in_4bit": opts.load_in_4bit,
            **({"quant_type": opts.quant_type, "double_quant": opts.double_quant} if opts.load_in_4bit else {}),
            "processor": dict(processor_settings or {})}
    return EvalModel(model, processor, family, generation_prefix(processor, family), info, pixel_defaults)


def dataset_prompts(em: EvalModel, dataset_dir: str | Path, limit: int | None = None) -> list[Prompt]:
    """The generation prompt of every built sample (the first `limit`), with the processor
    set to the pixel limits the samples were built with (nothing carried over from a
    previous dataset)."""
    restore_pixel_limits(em.processor, em.pixel_defaults)
    set_pixel_limits(em.processor, **processor_settings(dataset_dir))   # as the samples were built
    ds = load_samples(dataset_dir)
    n = len(ds) if limit is None else min(limit, len(ds))
    return [prompt_from_sample(ds[i], em.processor.tokenizer, em.family, em.prefix) for i in range(n)]


def score_prompts(em: EvalModel, prompts: list[Prompt], opts: EvalOptions, *, blank: bool = False,
                  desc: str = "eval", seed: int | None = None, progress: bool = True) -> list[dict]:
    """Generate `opts.samples` replies per prompt (seeded with `seed`, else `opts.seed`) and
    score each; rows are prompt-major."""
    batches = [blank_media(p.batch) if blank else p.batch for p in prompts]
    replies = generate_replies(em.model, em.processor, batches, max_new_tokens=opts.max_new_tokens,
                               batch_size=opts.batch_size, samples=opts.samples, temperature=opts.temperature,
                               seed=opts.seed if seed is None else seed, desc=desc, progress=progress)
    rows = []
    for k, gen in enumerate(replies):
        p = prompts[k // opts.samples]
        row = {"id": p.id, "sample": k % opts.samples, "condition": "blank" if blank else "real"}
        row.update(score_reply(p.prefix + gen.text, p.reference, num_tokens=gen.num_tokens,
                               hit_budget=gen.hit_budget, reference_reply=p.reference_reply,
                               think=em.family.think_tokens, rel_tol=opts.rel_tol))
        rows.append(row)
    return rows


def _score_with_tools(em: EvalModel, ds, n: int, opts: EvalOptions, *, blank: bool, desc: str) -> list[dict]:
    """The tool loop (eval/tools.py) for every sample; each row scores the last reply."""
    from .tools import agent_rows, load_tools, tool_prompt_from_sample, transcript_row
    toolbox = load_tools(opts.tools, opts.tool_timeout)
    prompts = [tool_prompt_from_sample(ds[i], em.processor.tokenizer, em.family, em.prefix) for i in range(n)]
    batches = [blank_media(p.batch) if blank else p.batch for p in prompts]
    states = agent_rows(em, prompts, batches, toolbox, max_turns=opts.max_tool_turns,
                        max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size, desc=desc)
    rows, schemas = [], toolbox.schemas
    for p, state in zip(prompts, states):
        row = {"id": p.id, "sample": 0, "condition": "blank" if blank else "real"}
        row.update(score_reply(p.prefix + state["replies"][-1], p.reference, num_tokens=state["tokens"],
                               hit_budget=state["hit"], reference_reply=p.reference_reply,
                               think=em.family.think_tokens, rel_tol=opts.rel_tol))
        row.update(transcript_row(p, state, schemas, em.family.tool_call_tokens))
        rows.append(row)
    return rows


def score_dataset(em: EvalModel, dataset_dir: str | Path, opts: EvalOptions, *, blank: bool = False,
                  desc: str = "eval") -> list[dict]:
    """Generate for every sample (`opts.samples` replies each) and score each reply; with
    `opts.tools`, run the tool loop (eval/tools.py) for every sample."""
    if opts.tools:
        restore_pixel_limits(em.processor, em.pixel_defaults)     # nothing carried over from a previous dataset
        set_pixel_limits(em.processor, **processor_settings(dataset_dir))   # as the samples were built
        ds = load_samples(dataset_dir)
        n = len(ds) if opts.limit is None else min(opts.limit, len(ds))
        return _score_with_tools(em, ds, n, opts, blank=blank, desc=desc)
    return score_prompts(em, dataset_prompts(em, dataset_dir, opts.limit), opts, blank=blank, desc=desc)


def write_results(out_dir: str | Path, rows: list[dict], settings: dict, title: str) -> dict:
    """samples.jsonl, summary.json (metrics + settings) and report.md; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    write_text_atomic(out / SAMPLES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_json_atomic(out / SUMMARY, {**summary, "settings": settings})
    write_text_atomic(out / REPORT, markdown_report(summary, rows, title))
    return summary


def evaluate(em: EvalModel, dataset_dir: str | Path, opts: EvalOptions, out_dir: str | Path, *,
             desc: str = "eval", settings: dict | None = None) -> dict:
    """Score a built dataset (and again on blank media with `opts.blank_images`); write OUT."""
    rows = score_dataset(em, dataset_dir, opts, desc=desc)
    if opts.blank_images:
        rows += score_dataset(em, dataset_dir, opts, blank=True, desc=f"{desc}, blank media")
    settings = {**em.info, "data": str(dataset_dir), "options": asdict(opts), **(settings or {})}
    return write_results(out_dir, rows, settings, f"Evaluation of {Path(em.info.get('model', '')).name}")


def prepare_data(data: str | Path, model_dir: Path, out_dir: Path, processor_settings: dict,
                 reasoning: str | None) -> tuple[Path, dict]:
    """A built dataset folder for `data`: as given when built, else built from the raw
    file(s) into OUT/data with the model's processor (and the run's settings)."""
    data = Path(data)
    if is_built(data):
        return data, {}
    from ..data.build import BuildConfig, build
    if not data.exists():
        raise UserError("--data does not exist", path=str(data))
    report = build(BuildConfig(input=str(data), model=str(model_dir), out=str(out_dir / "data"),
                               reasoning=reasoning, **processor_settings))
    if not report["kept"]:
        raise UserError(f"no usable records ({report['quarantined']} quarantined, see "
                        f"{out_dir / 'data' / 'quarantine.jsonl'})", path=str(data))
    return out_dir / "data", {"data_build": {k: report[k] for k in ("input_records", "kept", "quarantined")}}


@dataclass
class Target:
    """What to evaluate or sample from: a model folder (+ adapter), resolved from a run folder
    when given (its base, adapter, processor settings, reasoning format, dtype, QLoRA)."""
    model: str | Path | None
    adapter: str | Path | None = None
    run: str | Path | None = None
    processor: dict = field(default_factory=dict)
    reasoning: str | None = None
    run_dtype: str | None = None
    data: str | Path | None = None        # the run's evaluation data, unless given
    quant: dict = field(default_factory=dict)   # a QLoRA run's 4-bit loading (load_in_4bit, quant_type, double_quant)


def resolve_target(*, model=None, adapter=None, run=None, data=None) -> Target:
    if run is None:
        return Target(model, adapter, data=data)
    folder = RunFolder(run)
    loading = folder.recipe().loading()               # load the base as the run trained it
    full = not (folder.adapter / "adapter_config.json").is_file()
    quant = {k: loading[k] for k in ("load_in_4bit", "quant_type", "double_quant")} if loading["load_in_4bit"] else {}
    return Target(model or (folder.adapter if full else folder.model_dir()),
                  adapter or (None if full else folder.adapter), run, folder.processor_settings(),
                  folder.dataset().get("reasoning"), loading["dtype"], data or folder.dataset().get("eval"), quant)


def run_eval(out_dir: str | Path, opts: EvalOptions, *, model: str | Path | None = None,
             adapter: str | Path | None = None, run: str | Path | None = None,
             data: str | Path | None = None) -> dict:
    """The `qvq-tune eval` flow; returns the summary."""
    out_dir = Path(out_dir)
    t = resolve_target(model=model, adapter=adapter, run=run, data=data)
    if t.quant:
        opts = replace(opts, **t.quant)              # evaluate the base as QLoRA trained it
    if t.model is None or t.data is None:
        raise UserError("eval needs --model (or --run) and --data (or a run with data.eval)", key="data")
    dataset, build_info = prepare_data(t.data, Path(t.model), out_dir, t.processor, t.reasoning)
    em = load_for_eval(t.model, t.adapter, opts, processor_settings=t.processor, run_dtype=t.run_dtype)
    settings = {"run": str(run) if run else None, "reasoning": t.reasoning, **build_info}
    return evaluate(em, dataset, opts, out_dir, settings=settings)
