"""Which licence a checkpoint folder is under, read from its LICENSE text and model card.

The verdict comes from the LICENSE file's text first and the model card's front matter
(`license`, `license_name`, `license_link`) second; when both name a licence and they
differ, the disagreement is reported and the text wins. Texts are recognised by their
distinctive clauses (the grant, the restriction, the notice each licence asks for), never
by a file name or one keyword: a copy that lacks a licence's decisive clauses (truncated
or edited) is `unknown`, not the licence its title names.

`LICENSES` holds what each licence means for someone redistributing a fine-tune of the
model: commercial use, whether the user must accept it explicitly, its conditions, the
NOTICE line it asks for and the attribution ("Built with Qwen") it requires.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

LicenseId = str                        # a key of LICENSES (LICENSE_IDS), the one list of licence ids
CommercialUse = Literal["yes", "conditional", "no", "unknown"]


@dataclass(frozen=True)
class LicenseTerms:
    id: str
    name: str
    commercial_use: CommercialUse
    requires_acceptance: bool
    conditions: tuple[str, ...]
    notice: str | None = None             # the line a NOTICE file must carry, when the licence asks for one
    attribution: str | None = None        # what a derived model's documentation must display
    restriction: str | None = None        # the one-line restriction stated when the licence is accepted
    banner: str | None = None             # shown at the top of a derived model's card
    hub_license: str = "other"            # Hugging Face front matter `license`
    hub_license_name: str | None = None   # ... and `license_name` when `license: other`


_BUILT_WITH = ("display \"Built with Qwen\" or \"Improved using Qwen\" in the documentation of a model "
               "trained, fine-tuned or improved with it that is distributed or made available")
_COPY = "give every recipient a copy of the agreement"
_CHANGED = "modified files must carry prominent notices that they were changed"

LICENSES: dict[str, LicenseTerms] = {t.id: t for t in (
    LicenseTerms(
        id="apache-2.0", name="Apache License 2.0", commercial_use="yes", requires_acceptance=False,
        conditions=("give every recipient a copy of the License", _CHANGED,
                    "keep the copyright, patent, trademark and attribution notices, and the base's NOTICE file "
                    "when it has one"),
        hub_license="apache-2.0"),
    LicenseTerms(
        id="qwen", name="Qwen LICENSE AGREEMENT", commercial_use="conditional", requires_acceptance=True,
        conditions=("commercial use by a product or service with more than 100 million monthly active users "
                    "needs a separate license from Alibaba Cloud", _COPY, _CHANGED,
                    "ship a NOTICE file with the Qwen attribution line", _BUILT_WITH,
                    "comply with export controls (China, United States, other regions)"),
        notice="Qwen is licensed under the Qwen LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. All Rights Reserved.",
        attribution="Built with Qwen", hub_license_name="qwen",
        restriction="commercial use above 100 million monthly active users needs a separate license from "
                    "Alibaba Cloud"),
    LicenseTerms(
        id="qwen-research", name="Qwen RESEARCH LICENSE AGREEMENT", commercial_use="no", requires_acceptance=True,
        conditions=("non-commercial use only (research or evaluation); commercial use needs a license from "
                    "Alibaba Cloud", _COPY, _CHANGED, "ship a NOTICE file with the Qwen attribution line",
                    _BUILT_WITH, "comply with export controls (China, United States, other regions)"),
        notice="Qwen is licensed under the Qwen RESEARCH LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. "
               "All Rights Reserved.",
        attribution="Built with Qwen", hub_license_name="qwen-research",
        restriction="NON-COMMERCIAL: research or evaluation only; the export is marked non-commercial",
        banner="**Non-commercial.** The base model is under the Qwen RESEARCH LICENSE AGREEMENT: this model may "
               "be used for research or evaluation only; commercial use needs a license from Alibaba Cloud."),
    LicenseTerms(
        id="tongyi-qianwen", name="Tongyi Qianwen LICENSE AGREEMENT", commercial_use="conditional",
        requires_acceptance=True,
        conditions=("commercial use by a product or service with more than 100 million monthly active users "
                    "needs a separate license from Alibaba Cloud", _COPY, _CHANGED,
                    "ship a NOTICE file with the Tongyi Qianwen attribution line",
                    "the model and its outputs may not be used to improve any other large language model",
                    "comply with export controls (China, United States, other regions)"),
        notice="Tongyi Qianwen is licensed under the Tongyi Qianwen LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. "
               "All Rights Reserved.",
        hub_license_name="tongyi-qianwen",
        restriction="the model and any output of it may not be used to improve any other large language model; "
                    "commercial use above 100 million monthly active users needs a separate license"),
    LicenseTerms(
        id="unknown", name="unrecognised licence", commercial_use="unknown", requires_acceptance=True,
        conditions=("the licence could not be identified: read it yourself before redistributing",)),
)}
LICENSE_IDS = tuple(LICENSES)          # what `--accept-license` takes; the one list of licence ids


# ---- clauses ------------------------------------------------------------------------------
# Each clause is a regular expression over the normalised text (lower case, straight
# quotes, single spaces). A licence is recognised when every clause of one of its
# `required` sets is present and none of its `excluded` clauses is.
CLAUSES: dict[str, str] = {
    "apache.title": r"apache license version 2\.0, january 2004",
    "apache.terms": r"terms and conditions for use, reproduction, and distribution",
    "apache.copyright_grant": r"grant of copyright license",
    "apache.patent_grant": r"grant of patent license",
    "apache.notice_file": r"if the work includes a \"notice\" text file as part of its distribution",
    "apache.header": r"licensed under the apache license, version 2\.0",
    "apache.header_compliance": r"you may not use this file except in compliance with the license",
    "qwen.title": r"\bqwen license agreement\b",
    "qwen.notice": r"\"qwen is licensed under the qwen license agreement",
    "research.title": r"\bqwen research license agreement\b",
    "research.notice": r"\"qwen is licensed under the qwen research license agreement",
    "research.non_commercial_grant": r"for non-commercial purposes only",
    "research.non_commercial_definition": r"\"non-commercial\" shall mean for research or evaluation purposes only",
    "tongyi.title": r"\btongyi qianwen license agreement\b",
    "tongyi.notice": r"\"tongyi qianwen is licensed under the tongyi qianwen license agreement",
    "tongyi.no_improving_other_llms": r"you can not use the materials or any output therefrom to improve any other "
                                      r"large language model",
    "mau_threshold": r"product or service has more than 100 million monthly active users",
    "built_with_qwen": r"display \"built with qwen\" or \"improved using qwen\"",
}


@dataclass(frozen=True)
class Recogniser:
    license: str
    required: tuple[tuple[str, ...], ...]   # any one set, every clause in it
    excluded: tuple[str, ...] = ()


RECOGNISERS = (
    Recogniser("apache-2.0", (("apache.title", "apache.terms", "apache.copyright_grant", "apache.patent_grant"),
                              ("apache.header", "apache.header_compliance"))),
    Recogniser("qwen", (("qwen.title", "mau_threshold", "built_with_qwen"),),
               excluded=("research.non_commercial_grant", "tongyi.no_improving_other_llms")),
    Recogniser("qwen-research", (("research.title", "research.non_commercial_grant"),)),
    Recogniser("tongyi-qianwen", (("tongyi.title", "mau_threshold", "tongyi.no_improving_other_llms"),),
               excluded=("research.non_commercial_grant",)),
)

# Model-card `license` / `license_name` values as published on the Hub.
CARD_NAMES = {
    "apache-2.0": "apache-2.0", "apache 2.0": "apache-2.0", "apache-2": "apache-2.0",
    "qwen": "qwen", "qwen-license": "qwen", "qwen-research": "qwen-research",
    "tongyi-qianwen": "tongyi-qianwen", "tongyi-qianwen-license-agreement": "tongyi-qianwen",
}
LICENSE_FILE = re.compile(r"^licen[cs]e(\.(txt|md))?$", re.I)
NOTICE_FILE = re.compile(r"^notice(\.(txt|md))?$", re.I)


@dataclass
class Evidence:
    file: str
    line: int
    clause: str
    text: str


@dataclass
class LicenseReport:
    license: str
    name: str
    commercial_use: str
    requires_acceptance: bool
    conditions: list[str]
    notice: str | None
    attribution: str | None
    restriction: str | None
    source: Literal["text", "card", "none"]
    license_files: list[str]
    notice_files: list[str]
    evidence: list[Evidence]
    card: dict = field(default_factory=dict)     # license / license_name / license_link as written
    card_license: str | None = None              # what the card names, classified
    disagreement: str | None = None
    hint: str | None = None

    @property
    def terms(self) -> LicenseTerms:
        return LICENSES[self.license]

    def to_dict(self) -> dict:
        return asdict(self)


def normalise(text: str) -> str:
    text = text.replace("\u201c", "\"").replace("\u201d", "\"").replace("\u2019", "'").replace("\u2018", "'")
    return re.sub(r"\s+", " ", text.lower()).strip()


def find_clauses(text: str, file: str) -> dict[str, Evidence]:
    """Every clause of `CLAUSES` found in `text`, with the line it starts on."""
    lines = text.splitlines()
    joined, starts = "", []
    for line in lines:
        starts.append(len(joined))
        joined += normalise(line) + " "
    found = {}
    for name, pattern in CLAUSES.items():
        m = re.search(pattern, joined)
        if m:
            idx = max(i for i, s in enumerate(starts) if s <= m.start()) if starts else 0
            found[name] = Evidence(file=file, line=idx + 1, clause=name, text=lines[idx].strip()[:200])
    return found


def recognise(clauses: dict) -> list[str]:
    """Licences whose decisive clauses are all present (and whose excluded ones are not)."""
    out = []
    for r in RECOGNISERS:
        if any(all(c in clauses for c in req) for req in r.required) and not any(c in clauses for c in r.excluded):
            out.append(r.license)
    return out


def front_matter(model_dir: str | Path) -> dict:
    """The model card's YAML front matter (`README.md`, read by `huggingface_hub.ModelCard`), or {}
    when there is none or it is not a YAML mapping."""
    from huggingface_hub import ModelCard

    card = Path(model_dir) / "README.md"
    if not card.is_file():
        return {}
    try:
        return ModelCard.load(card, ignore_metadata_errors=True).data.to_dict()
    except (yaml.YAMLError, ValueError):
        return {}


def card_license(meta: dict) -> str | None:
    """The licence a card's front matter names: `license`, or `license_name` when `license` is
    `other` or absent (as the Hub reads them); a name qvq-tune does not know is `unknown`."""
    value = meta.get("license")
    if not isinstance(value, str) or value.strip().lower() in ("", "other"):
        value = meta.get("license_name")
    if not isinstance(value, str) or not value.strip():
        return None
    return CARD_NAMES.get(value.strip().lower(), "unknown")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def classify(model_dir: str | Path) -> LicenseReport:
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and LICENSE_FILE.match(p.name)) \
        if model_dir.is_dir() else []
    notices = sorted(p.name for p in model_dir.iterdir() if p.is_file() and NOTICE_FILE.match(p.name)) \
        if model_dir.is_dir() else []
    evidence: list[Evidence] = []
    per_file: dict[str, list[str]] = {}
    for path in files:
        clauses = find_clauses(_read(path), path.name)
        evidence += clauses.values()
        per_file[path.name] = recognise(clauses)
    from_text = sorted({lic for found in per_file.values() for lic in found})
    meta = front_matter(model_dir)
    card = {k: meta[k] for k in ("license", "license_name", "license_link") if k in meta}
    named = card_license(meta)
    disagreement = None
    if len(from_text) > 1:
        disagreement = "the licence texts match several licences: " + ", ".join(
            f"{name}: {'/'.join(found) or 'unrecognised'}" for name, found in per_file.items())
        verdict, source = "unknown", "text"
    elif from_text:
        verdict, source = from_text[0], "text"
    elif files:
        verdict, source = "unknown", "text"
    elif named:
        verdict, source = named, "card"
    else:
        verdict, source = "unknown", "none"
    if source == "text" and named and named != verdict and not disagreement:
        shown = card.get("license") if card.get("license") not in (None, "other") else card.get("license_name")
        text_is = f"is the {LICENSES[verdict].name}" if verdict != "unknown" else \
            "is not a licence text qvq-tune recognises"
        disagreement = (f"the model card names {shown!r} ({named}) but {'/'.join(p.name for p in files)} {text_is}; "
                        "the text is trusted")
    terms = LICENSES[verdict]
    return LicenseReport(
        license=verdict, name=terms.name, commercial_use=terms.commercial_use,
        requires_acceptance=terms.requires_acceptance, conditions=list(terms.conditions), notice=terms.notice,
        attribution=terms.attribution, restriction=terms.restriction, source=source,
        license_files=[p.name for p in files], notice_files=notices, evidence=evidence, card=card,
        card_license=named, disagreement=disagreement,
        hint=None if files else "no LICENSE file in the folder: copy the base model's LICENSE next to its weights")
