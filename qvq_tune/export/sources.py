"""Where an export reads from: a run folder, or a base and an adapter given directly.

A run folder says everything: the base checkpoint, the adapter, the dataset and the
processor settings it was built with, the method (and the 4-bit settings of a QLoRA run),
the training report. Given `--base/--adapter`, the proof's samples come from `--data`, or
from a few synthetic caption questions built with the base's processor.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..models.loading import load_processor
from ..recipe import loading_arguments
from ..run_folder import TRAIN_REPORT, RunFolder


def quantized_settings(loading: dict) -> dict | None:
    """The 4-bit settings (`quant_type`, `double_quant`, `dtype`) of a run's loading
    arguments (`recipe.loading_arguments`), or None when its base was not quantised."""
    if not loading["load_in_4bit"]:
        return None
    return {k: v for k, v in loading.items() if k != "load_in_4bit"}


@dataclass
class Sources:
    """Where an export reads from: a run folder, or a base and an adapter given directly."""
    base: Path
    adapter_dir: Path
    data: Path | None = None                  # the proof's samples
    processor_settings: dict = field(default_factory=dict)
    method: str | None = None                 # qlora | lora | full, when a run says
    quantized: dict | None = None             # the 4-bit settings a QLoRA run trained with
    train_report: dict | None = None
    run: Path | None = None
    train_data: Path | None = None            # what the adapter was trained on (a run says)

    @classmethod
    def resolve(cls, run: str | Path | None = None, base: str | Path | None = None,
                adapter: str | Path | None = None, data: str | Path | None = None,
                qlora: bool = False) -> Sources:
        if run is None:
            if base is None or adapter is None:
                raise UserError("give --run RUN, or both --base DIR and --adapter DIR")
            return cls(Path(base), Path(adapter), Path(data) if data else None,
                       method="qlora" if qlora else None,
                       quantized=quantized_settings(loading_arguments("qlora", "float32")) if qlora else None)
        if base is not None or adapter is not None:
            raise UserError("give either --run or --base/--adapter, not both")
        folder = RunFolder(run)
        recipe = folder.recipe()
        method, quantized = recipe.method, quantized_settings(recipe.loading())
        report = folder.train_report() if folder.file(TRAIN_REPORT).is_file() else None
        train_data = Path(folder.dataset()["train"])
        return cls(folder.model_dir(), folder.adapter, Path(data) if data else train_data,
                   folder.processor_settings(), method, quantized, report, folder.path, train_data)


def proof_batch(src: Sources, samples: int) -> dict:
    """A collated batch with labels: image+text samples from the given data, else a few
    synthetic caption questions built with the base's processor."""
    from ..data.collate import VisionCollator
    from ..data.dataset import load_samples
    processor = load_processor(src.base, **src.processor_settings)
    if src.data is not None:
        ds = load_samples(src.data)
        picked = [i for i in range(len(ds)) if ds[i].get("images")][:samples] or list(range(min(samples, len(ds))))
        return VisionCollator(processor)([ds[i] for i in picked])
    from ..data.build import BuildConfig, build
    from ..synth.captions import write_captions
    with tempfile.TemporaryDirectory(prefix="qvq-tune-proof-") as work:
        questions = write_captions(Path(work) / "q", samples, "export-proof")
        build(BuildConfig(input=str(questions), model=str(src.base), out=str(Path(work) / "built"),
                          reasoning="answer-only", reuse=False, workers=1, **src.processor_settings))
        ds = load_samples(Path(work) / "built")
        return VisionCollator(processor)([ds[i] for i in range(len(ds))])


def training_data(src: Sources, *, redact_paths: bool = False) -> dict:
    """The training-data document the export carries: the run's (its chain of stages), or
    with --base/--adapter the adapter's own record (an exported adapter, a run's adapter/),
    else the base's stages and the adapter as a stage whose data is not recorded."""
    from ..data import training_data as td
    from ..run_folder import inherited_stages
    if src.run is not None:
        doc = RunFolder(src.run).training_data()
    else:
        doc = td.document(inherited_stages({"export": {"start_adapter": str(src.adapter_dir)}}, src.base)[0])
    return td.redact(doc) if redact_paths else doc
