"""Slurm batch scripts: the `#SBATCH` header, the scheduler options users pass, and the
command lines inside, for the training job (`train/nodes.py`) and the sharded data build
(`qvq-tune data build --slurm`).

Scripts call this very interpreter by its absolute path (`python_argv`), so a node needs no
PATH or virtual-environment set-up, and quote every argument for the shell.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .paths import write_text_atomic


@dataclass(frozen=True)
class SlurmOptions:
    """What a user tells the scheduler beyond the job's own shape."""
    partition: str | None = None          # `#SBATCH --partition`
    time: str | None = None               # `#SBATCH --time`, e.g. 24:00:00

    def __post_init__(self):
        for key in ("partition", "time"):
            value = getattr(self, key)
            if value is not None and (not value.strip() or any(c.isspace() for c in value)):
                raise UserError(f"--{key} must be one word, got {value!r}", key=key)

    def directives(self) -> dict[str, str | None]:
        return {k: v for k, v in (("partition", self.partition), ("time", self.time)) if v}


def python_argv(module: str, *args: str) -> list[str]:
    """`python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]


def quote(argv: list[str]) -> str:
    return shlex.join(map(str, argv))


def write_script(path: Path, *, about: list[str], directives: dict[str, object], body: list[str]) -> Path:
    """Write an executable batch script: shebang, comment lines, `#SBATCH --key=value` lines
    (value None: a bare switch), then `set -euo pipefail` and the body."""
    lines = ["#!/bin/bash", *(f"# {line}" if line else "#" for line in about)]
    lines += [f"#SBATCH --{key}" if value is None else f"#SBATCH --{key}={value}" for key, value in directives.items()]
    lines += ["set -euo pipefail", *body]
    write_text_atomic(path, "\n".join(lines) + "\n")
    path.chmod(0o755)
    return path
