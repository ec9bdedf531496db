"""What an export is asked to do: `MergeRequest` and `AdapterRequest`, validated when made.

Each field is a `qvq-tune export merge | adapter` flag, generated from its type, default
and metadata by `cli/args.py` as `data build`'s are from `BuildConfig`; a field marked
`cli=False` is for callers in code only (the demo's evaluation table). Every value that
can be checked without reading a file is checked here, so a bad one is refused before the
licence gate, the adapter or the base is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import UserError
from ..models.license import LICENSE_IDS

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
               "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def _flag(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass(kw_only=True)
class _Common:
    out: str | Path = field(metadata={"help": "export folder (written only when complete and checked)"})
    run: str | Path | None = _flag(None, "run folder (runs/NAME) with adapter/, recipe.yaml and dataset.json")
    base: str | Path | None = _flag(None, "base checkpoint folder (instead of --run, with --adapter)")
    adapter: str | Path | None = _flag(None, "PEFT adapter folder (instead of --run, with --base)")
    accept_license: str | None = _flag(None, f"accept the base model's licence ({', '.join(LICENSE_IDS)}); "
                                             "required unless it is apache-2.0", choices=LICENSE_IDS, metavar="ID")
    force: bool = _flag(False, "replace an existing export folder")
    redact_paths: bool = _flag(False, "leave every file and folder name out of training_data.json and the card's "
                                      "Training data section (files stay known by sha256)")
    evaluation: dict | None = _flag(None, "results to show on the model card", cli=False)

    def __post_init__(self):
        if self.accept_license is not None and self.accept_license not in LICENSE_IDS:
            raise UserError(f"--accept-license must be one of {', '.join(LICENSE_IDS)}", key="accept-license")


@dataclass(kw_only=True)
class MergeRequest(_Common):
    dtype: str = _flag("bf16", "dtype of the merged weights", choices=("bf16", "fp16", "fp32"))
    data: str | Path | None = _flag(None, "built dataset for the proof's samples (default: the run's training data)")
    samples: int = _flag(4, "samples in the proof (default 4)", metavar="N")
    qlora: bool = _flag(False, "with --base/--adapter: the adapter was trained on a 4-bit (nf4) base; also compare "
                               "with it")
    base_weights: Literal["original", "as-trained"] = _flag(
        "original", "QLoRA: merge into the original weights (default), or into their 4-bit rounding as the adapter "
                    "was trained on (bf16 output that computes what the 4-bit model + adapter did)")

    def __post_init__(self):
        super().__post_init__()
        if self.dtype not in DTYPE_NAMES:
            raise UserError(f"--dtype must be one of bf16, fp16, fp32 (got {self.dtype!r})", key="dtype")
        if self.base_weights not in ("original", "as-trained"):
            raise UserError(f"--base-weights must be original or as-trained (got {self.base_weights!r})",
                            key="base_weights")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise UserError(f"--samples must be a positive integer (got {self.samples!r})", key="samples")

    @property
    def torch_dtype(self) -> str:
        return DTYPE_NAMES[self.dtype]


@dataclass(kw_only=True)
class AdapterRequest(_Common):
    target: Literal["peft", "vllm"] = _flag("peft", "peft: a clean PEFT adapter; vllm: one vLLM serves, mended or "
                                                    "refused")
    max_lora_rank: int | None = _flag(None, "vLLM --max-lora-rank (default: the smallest that fits r)", metavar="N")
    tower_lora: bool = _flag(False, "vllm: keep LoRA on the vision tower / merger (serves with "
                                    "--enable-tower-connector-lora)")

    def __post_init__(self):
        super().__post_init__()
        if self.target not in ("peft", "vllm"):
            raise UserError("--target must be peft or vllm", key="target")
