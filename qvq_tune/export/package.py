"""The files an export folder carries besides weights and card: LICENSE, NOTICE, SHA256SUMS.

The base's licence file(s) are copied as they are; a NOTICE is written when the licence
asks for one (the Qwen agreements' attribution line, or the base's own NOTICE under
Apache-2.0) and says which files were changed; `SHA256SUMS` lists every file written, in
`sha256sum -c` format.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import date
from pathlib import Path

from ..models.license import LicenseReport
from ..paths import publishable, write_text_atomic

SUMS = "SHA256SUMS"


def copy_license(base_dir: str | Path, out: Path, report: LicenseReport) -> None:
    for name in report.license_files:
        shutil.copy2(Path(base_dir) / name, out / name)


def write_notice(base_dir: str | Path, out: Path, report: LicenseReport, changed: str) -> bool:
    """NOTICE: the licence's attribution line, the base's own NOTICE, and what was changed."""
    parts = []
    if report.notice:
        parts.append(report.notice)
    for name in report.notice_files:
        parts.append((Path(base_dir) / name).read_text(encoding="utf-8", errors="replace").strip())
    if not parts:
        return False
    parts.append(f"Modified files: {changed} (qvq-tune, {date.today().isoformat()}).")
    write_text_atomic(out / "NOTICE", "\n\n".join(parts) + "\n")
    return True


def sha256sums(folder: Path) -> Path:
    """Write SUMS listing every file under `folder` (but itself), sorted, `sha256sum` style;
    every file gets the permissions a plain write gives (some writers create them private)."""
    rows = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS):
        publishable(path, 0o777 if path.suffix == ".sh" else 0o666)
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        rows.append(f"{h.hexdigest()}  {path.relative_to(folder).as_posix()}")
    write_text_atomic(folder / SUMS, "\n".join(rows) + "\n")
    return folder / SUMS
