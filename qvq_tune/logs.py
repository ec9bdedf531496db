"""Silence known-harmless third-party log lines so real messages stay visible."""

from __future__ import annotations

import logging

_QUIET = (
    "bitsandbytes.backends.cpu.ops",   # "Failed to load CPU gemm_4bit_forward": falls back (NOTES.md)
    "DeepSpeed",                      # "Setting accelerator to CPU"
    "huggingface_hub.repocard",       # "Repo card metadata block was not found": a card without front matter
)


def quiet_third_party() -> None:
    import warnings
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Deprecation notices raised inside the libraries about their own internals.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft|torch)\.")
