"""`export_run(run, out)`: the export flow the CLI and the demo both call.

Reads everything from the run folder (base checkpoint, adapter, the dataset and the
processor settings it was built with), merges the adapter into the unquantised base,
saves it in the export dtype and verifies it against base + adapter on real samples.

    OUT/merged/              the merged model (loads like the base)
    OUT/adapter/             a copy of the run's adapter
    OUT/export_report.json   paths, dtype and the verification figures
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ..data.collate import VisionCollator
from ..data.dataset import load_samples
from ..errors import UserError
from ..models.loading import load_processor
from ..paths import write_json_atomic
from ..run_folder import RunFolder
from .merge import merge_adapter, reply_positions, verify_merge


def verification_batch(run: RunFolder, data: str | Path | None = None, samples: int = 4) -> dict:
    """A collated batch (with labels) from the run's training data, or from `data`."""
    processor = load_processor(run.model_dir(), **run.processor_settings())
    ds = load_samples(data or run.dataset()["train"])
    return VisionCollator(processor)([ds[i] for i in range(min(samples, len(ds)))])


def export_run(run_dir: str | Path, out_dir: str | Path, *, dtype: str = "bfloat16",
               verify_data: str | Path | None = None, verify_samples: int = 4) -> dict:
    run = RunFolder(run_dir)
    if not (run.adapter / "adapter_config.json").is_file():
        raise UserError("no adapter/adapter_config.json in this run folder", path=str(run.path))
    base_dir = str(run.model_dir())
    batch = verification_batch(run, verify_data, verify_samples)
    replies = reply_positions(batch.pop("labels"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        merged_dir = merge_adapter(base_dir, str(run.adapter), out_dir / "merged", dtype=dtype)
        adapter_copy = out_dir / "adapter"
        if adapter_copy.exists():
            shutil.rmtree(adapter_copy)
        shutil.copytree(run.adapter, adapter_copy)
        check = verify_merge(base_dir, str(run.adapter), str(merged_dir), batch, replies)
    report = {"run": str(run.path), "base": base_dir, "merged": str(merged_dir), "adapter": str(adapter_copy),
              "dtype": dtype, "verification": asdict(check)}
    write_json_atomic(out_dir / "export_report.json", report)
    if not check.passed:
        raise RuntimeError(f"merged model disagrees with base + adapter: {asdict(check)}")
    return report
