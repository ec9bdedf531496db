"""The two export flows the CLI and the demo call: a merged model, and an adapter for serving.

`export_merge`: licence gate -> match the adapter to the base (refuse before writing) ->
check the target and the free disk space -> streamed merge into a temporary folder beside
the target -> config, processor (with the run's settings), identity -> the proof on
image+text samples -> LICENSE, NOTICE, model card, export_report.json, SHA256SUMS -> one
rename into place. When the proof (or anything after the gate) fails, the temporary folder
is removed, nothing appears at the target, and `TARGET.export_report.json` beside it says why.

`export_adapter`: licence gate -> a clean PEFT adapter (keys in the module-tree layout the
installed transformers loads) or a vLLM-ready one (`vllm.for_vllm`: mended with one line
per change, or refused) -> processor, licence files, card, `vllm_serve.sh`, report, sums.
"""

from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path

from ..errors import UserError
from ..models.detect import IDENTITY_FILE, detect
from ..models.license import LicenseReport
from ..models.loading import load_processor
from ..models.registry import ModelFamily, get_family
from ..paths import atomic_dir, write_json_atomic, write_text_atomic
from .adapter import WEIGHTS, Adapter
from .card import evaluation_section, front_matter, model_card, proof_section, training_data_section, training_section
from .license_gate import gate
from .merge import base_shards, output_bytes, plan_merge, stream_merge
from .names import NameIndex
from .nf4 import rounding_for
from .package import copy_license, sha256sums, write_notice
from .proof import peak_rss_mb, prove
from .requests import AdapterRequest, MergeRequest
from .sources import Sources, proof_batch, training_data
from .vllm import for_vllm, serve_command

REPORT = "export_report.json"
COPIED_FILES = ("config.json", "generation_config.json")


class ExportFailed(UserError):
    """An export that failed after the licence gate; its report lies beside the target."""


def failure_report_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.{REPORT}")


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UserError("the target exists; pass --force to replace it (it is only replaced once the new "
                        "export is complete and checked)", path=str(out))
    if out.exists() and not out.is_dir():
        raise UserError("the target exists and is not a folder", path=str(out))


def _check_disk(out: Path, needed: int) -> None:
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    margin = needed // 50 + (64 << 20)
    if free < needed + margin:
        raise UserError(f"not enough free disk space: the export needs about {(needed + margin) / 2**30:.2f} GiB, "
                        f"{free / 2**30:.2f} GiB are free", path=str(parent))


def _family(base: Path) -> ModelFamily:
    return get_family(detect(base).family)


def _base_name(base: Path) -> str:
    return detect(base).checkpoint or base.resolve().name


def _write_processor(src: Sources, out: Path) -> None:
    load_processor(src.base, **src.processor_settings).save_pretrained(str(out))


def _identity(src: Sources, out: Path, relation: str) -> None:
    """Carry the base's qvq-tune identity (family, reasoning style, system prompt), marked as derived."""
    path = src.base / IDENTITY_FILE
    if path.is_file():
        identity = json.loads(path.read_text(encoding="utf-8"))
        identity.update(base_checkpoint=identity.get("checkpoint"), relation=relation)
        write_json_atomic(out / IDENTITY_FILE, identity)


def _config(src: Sources, out: Path, dtype: str) -> None:
    for name in COPIED_FILES:
        if (src.base / name).is_file():
            shutil.copy2(src.base / name, out / name)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise UserError("the base checkpoint is quantised (quantization_config in config.json); merge into the "
                        "original full-precision weights", path=str(src.base / "config.json"))
    for node in (config, config.get("text_config") or {}, config.get("vision_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if key in node:
                node[key] = dtype
    write_json_atomic(out / "config.json", config)


def _package(src: Sources, tmp: Path, title: str, licence: LicenseReport, accepted: str | None, *,
             relation: str, library: str, tags: list[str], changed: str, sections: list[str],
             redact_paths: bool) -> None:
    """LICENSE, NOTICE, training_data.json and the model card (its Training data section after `sections`)."""
    from ..data.training_data import FILE, hub_datasets
    copy_license(src.base, tmp, licence)
    write_notice(src.base, tmp, licence, changed)
    doc = training_data(src, redact_paths=redact_paths)
    write_json_atomic(tmp / FILE, doc)
    meta = front_matter(licence, base_model=_base_name(src.base), relation=relation, library=library, tags=tags,
                        datasets=hub_datasets(doc), has_license_file=bool(licence.license_files))
    sections = sections[:1] + [training_data_section(doc)] + sections[1:]     # after "Training"
    write_text_atomic(tmp / "README.md", model_card(meta, title, licence, accepted, sections))


def _fail(out: Path, report: dict, message: str):
    message = " ".join(message.split())          # one line, whatever the cause printed
    write_json_atomic(failure_report_path(out), {**report, "passed": False, "error": message})
    raise ExportFailed(f"{message}; nothing was written to {out}; see {failure_report_path(out)}")


def export_merge(req: MergeRequest) -> dict:
    out, dtype = Path(req.out).absolute(), req.torch_dtype
    src = Sources.resolve(req.run, req.base, req.adapter, req.data, req.qlora)
    as_trained = req.base_weights == "as-trained"
    if as_trained and src.quantized is None:
        raise UserError("--base-weights as-trained applies to a QLoRA adapter (a run with method qlora, or "
                        "--qlora with --base/--adapter): a LoRA adapter was trained on the original weights",
                        key="base_weights")
    licence = gate(src.base, req.accept_license)
    family = _family(src.base)
    adapter = Adapter.load(src.adapter_dir)
    shards = base_shards(src.base)
    plan = plan_merge(adapter, shards, family.weight_prefix_aliases)
    if as_trained:
        plan.rounding = rounding_for(src.base, family.quant_skip_modules, (n for s in shards for n in s.names),
                                     family.weight_prefix_aliases, src.quantized)
    _check_target(out, req.force)
    _check_disk(out, output_bytes(src.base, shards, dtype))
    report = {"kind": "merge", "out": str(out), "base": str(src.base), "adapter": str(src.adapter_dir),
              "run": str(src.run) if src.run else None, "dtype": dtype, "license": licence.to_dict(),
              "accepted_license": req.accept_license, "base_weights": req.base_weights}
    try:
        batch = proof_batch(src, req.samples)
        with atomic_dir(out) as tmp:
            report["merge"] = stream_merge(src.base, shards, plan, tmp, dtype)
            report["merge"]["peak_rss_mb"] = peak_rss_mb()
            _config(src, tmp, dtype)
            _write_processor(src, tmp)
            _identity(src, tmp, "merge")
            proof = prove(src.base, adapter, tmp, batch, dtype, quantized=src.quantized, as_trained=as_trained)
            report["proof"] = proof.to_dict()
            if not proof.passed:
                raise _ProofFailed("; ".join(proof.reasons))
            sections = [training_section(src.method, adapter, src.train_report), evaluation_section(req.evaluation),
                        proof_section(report["proof"])]
            _package(src, tmp, out.name, licence, req.accept_license, relation="merge", library="transformers",
                     tags=["qvq-tune", family.name, src.method or "lora", "merged", "multimodal"],
                     changed=f"the weights ({', '.join(s.file for s in shards)}): a LoRA adapter merged in",
                     sections=[s for s in sections if s], redact_paths=req.redact_paths)
            report["passed"] = True
            write_json_atomic(tmp / REPORT, report)
            sha256sums(tmp)
    except _ProofFailed as exc:
        _fail(out, report, f"the merged model failed its check against base + adapter: {exc}")
    except UserError as exc:
        _fail(out, report, str(exc))
    except Exception as exc:   # a bug or a library error: one line here, the traceback in the report
        report["traceback"] = traceback.format_exc()
        _fail(out, report, f"export failed: {type(exc).__name__}: {exc}")
    failure_report_path(out).unlink(missing_ok=True)
    return report


class _ProofFailed(Exception):
    pass


def export_adapter(req: AdapterRequest) -> dict:
    out = Path(req.out).absolute()
    src = Sources.resolve(req.run, req.base, req.adapter)
    licence = gate(src.base, req.accept_license)
    family = _family(src.base)
    adapter = Adapter.load(src.adapter_dir)
    modules = NameIndex(_module_names(src.base), family.weight_prefix_aliases)
    report = {"kind": "adapter", "target": req.target, "out": str(out), "base": str(src.base),
              "adapter": str(src.adapter_dir), "run": str(src.run) if src.run else None,
              "license": licence.to_dict(), "accepted_license": req.accept_license}
    if req.target == "vllm":
        served = for_vllm(adapter, family, modules, max_lora_rank=req.max_lora_rank, tower_lora=req.tower_lora)
        tensors, config, changes = served.tensors, served.config, served.changes
        command = serve_command(str(src.base), out.name, str(out), served, src.processor_settings)
        report.update(max_lora_rank=served.max_lora_rank, vllm_serve=command)
    else:
        tensors, config, changes = _peft_adapter(adapter, modules)
        command = None
    report["changes"] = changes
    _check_target(out, req.force)
    _check_disk(out, sum(t.numel() * t.element_size() for t in tensors.values()))
    from safetensors.torch import save_file
    with atomic_dir(out) as tmp:
        config = {**config, "base_model_name_or_path": _base_name(src.base)}
        write_json_atomic(tmp / "adapter_config.json", config)
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if command is None:      # PEFT users load the processor from here; vLLM uses the base's
            _write_processor(src, tmp)
        else:
            write_text_atomic(tmp / "vllm_serve.sh", f"#!/bin/sh\n{command}\n")
        sections = [training_section(src.method, adapter, src.train_report), evaluation_section(req.evaluation),
                    "## Changes for serving\n\n" + ("\n".join(f"- {c}" for c in changes) or "none")]
        if command:
            sections.append(f"## Serving with vLLM\n\n```\n{command}\n```")
        _package(src, tmp, out.name, licence, req.accept_license, relation="adapter", library="peft",
                 tags=["qvq-tune", family.name, src.method or "lora", "lora", req.target, "multimodal"],
                 changed="none of the base's files (this folder holds a LoRA adapter for it)",
                 sections=[s for s in sections if s], redact_paths=req.redact_paths)
        report["passed"] = True
        write_json_atomic(tmp / REPORT, report)
        sha256sums(tmp)
    return report


def _peft_adapter(adapter: Adapter, modules: NameIndex) -> tuple[dict, dict, list[str]]:
    """The adapter with keys in the module tree transformers builds today (PEFT skips keys
    saved under another layout), and a config that names its modules exactly."""
    mapping = adapter.module_map(modules)
    renamed = sum(module != path for module, path in mapping.items())
    changes = [f"renamed {renamed} adapter modules to the module tree of the installed transformers "
               "(model.language_model.* / model.visual.*)"] if renamed else []
    config = {**adapter.config, "inference_mode": True}
    if renamed:
        config["target_modules"] = sorted(mapping.values())
    return adapter.renamed_tensors(modules), config, changes


def _module_names(base: Path) -> list[str]:
    """The module tree of the base's architecture, built on the meta device (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText
    config = AutoConfig.from_pretrained(str(base))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return [name for name, _ in model.named_modules()]
