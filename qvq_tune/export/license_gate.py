"""The licence gate every export passes: classify the base's licence, require the user's acceptance.

`apache-2.0` proceeds; `qwen`, `qwen-research` and `tongyi-qianwen` need
`--accept-license <id>` (the research licence marks the export non-commercial, the
Tongyi Qianwen one states its restriction on improving other models); an unknown or
missing licence refuses unless the user passes `--accept-license unknown`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..models.detect import detect
from ..models.license import LICENSES, LicenseReport, classify


def gate(base_dir: str | Path, accepted: str | None) -> LicenseReport:
    report = classify(base_dir)
    lic, terms = report.license, report.terms
    if accepted is not None and accepted != lic:
        raise UserError(f"--accept-license {accepted} was given, but the base model's licence is {lic} "
                        f"({terms.name}); read it and accept that one", path=str(base_dir), key="accept-license")
    if terms.requires_acceptance and accepted != lic:
        raise UserError(_refusal(base_dir, report), path=str(base_dir), key="accept-license")
    return report


def _refusal(base_dir, report: LicenseReport) -> str:
    terms = report.terms
    if report.license == "unknown":
        why = (f"{', '.join(report.license_files)} is not a licence text qvq-tune recognises"
               if report.license_files else "the folder has no LICENSE file and its model card names no licence")
        known = detect(base_dir)
        if not report.license_files and known.license != "unknown":
            why += f" (it looks like {known.checkpoint}, which is under the {LICENSES[known.license].name}: " \
                   f"copy that LICENSE next to the weights)"
        msg = f"the base model's licence is unknown: {why}. Check it yourself, then pass --accept-license unknown"
    else:
        msg = (f"the base model is under the {terms.name} ({report.license}): {terms.restriction}. "
               f"Read {', '.join(report.license_files) or 'its licence'} and pass --accept-license {report.license}")
    if report.disagreement:
        msg += f" (note: {report.disagreement})"
    return msg
