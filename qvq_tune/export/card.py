"""The model card (`README.md`) of an export: Hub front matter, licence banners, and its sections.

Front matter: `license` / `license_name` / `license_link`, `base_model`,
`base_model_relation` (merge | adapter), `library_name`, `pipeline_tag`, tags, datasets.
The body says "Built with Qwen" where the licence requires it, carries a non-commercial
banner under the research licence, the licence's conditions and the acceptance, then the
training summary, the evaluation results when known and the merge proof.
"""

from __future__ import annotations

from datetime import date

from ..models.license import LicenseReport
from .adapter import Adapter


def front_matter(report: LicenseReport, *, base_model: str, relation: str, library: str, tags: list[str],
                 datasets: list[str], has_license_file: bool) -> dict:
    terms = report.terms
    meta: dict = {"license": terms.hub_license}
    if terms.hub_license == "other":
        meta["license_name"] = terms.hub_license_name or report.license
    if has_license_file:
        meta["license_link"] = "LICENSE"
    elif report.card.get("license_link"):
        meta["license_link"] = report.card["license_link"]
    meta.update(base_model=base_model, base_model_relation=relation, library_name=library,
                pipeline_tag="image-text-to-text", tags=tags)
    if datasets:
        meta["datasets"] = datasets
    return meta


def model_card(meta: dict, title: str, report: LicenseReport, accepted: str | None, sections: list[str]) -> str:
    """The card's text, front matter written by `huggingface_hub.ModelCardData` (in `meta`'s order)."""
    from huggingface_hub import ModelCard, ModelCardData

    terms = report.terms
    lines = [f"# {title}", ""]
    if terms.attribution:
        lines += [f"**{terms.attribution}.**", ""]
    if terms.banner:
        lines += [f"> {terms.banner}", ""]
    source = {"text": "the LICENSE text", "card": "the model card"}.get(report.source, "nothing: no LICENSE, no card")
    lines += ["## Licence", "", f"Base model licence: **{terms.name}** (`{report.license}`), recognised from {source}."]
    if accepted:
        lines += [f"Accepted for this export with `--accept-license {accepted}` on {date.today().isoformat()}."]
    if report.disagreement:
        lines += ["", f"Note: {report.disagreement}."]
    lines += ["", "Conditions:", ""] + [f"- {c}" for c in terms.conditions] + [""]
    for section in sections:
        lines += [section.rstrip(), ""]
    card = ModelCard(f"---\n{ModelCardData(**meta).to_yaml(original_order=list(meta))}\n---\n\n" + "\n".join(lines))
    return str(card)


def training_section(method: str | None, adapter: Adapter, train_report: dict | None) -> str:
    rows = [("method", method or "LoRA"), ("rank / alpha", f"{adapter.rank} / {adapter.config.get('lora_alpha')}"),
            ("adapted modules", str(len(adapter.pairs)))]
    r = train_report or {}
    for key in ("steps", "samples", "world_size", "trainable_parameters"):
        if r.get(key) is not None:
            rows.append((key.replace("_", " "), str(r[key])))
    if r.get("train_loss_first") is not None:
        rows.append(("train loss first -> last", f"{r['train_loss_first']:.4g} -> {r['train_loss_last']:.4g}"))
    return "## Training\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def evaluation_section(evaluation: dict | None) -> str | None:
    if not evaluation:
        return None
    return "## Evaluation\n\n| | |\n|---|---|\n" + "\n".join(
        f"| {k} | {v:.1%} |" if isinstance(v, float) and 0 <= v <= 1 else f"| {k} | {v} |"
        for k, v in evaluation.items())


def proof_section(proof: dict) -> str:
    p = proof["vs_base_plus_adapter"]
    lines = ["## Merge proof", "",
             f"Logits of this folder, reloaded, against the base + adapter unmerged (PEFT, fp32) on "
             f"{proof['samples']} image+text samples: max |diff| {p['max_abs_logit_diff']:.4g}, mean "
             f"{p['mean_abs_logit_diff']:.3g}, reply-token agreement {p['reply_top1_agreement']:.1%} "
             f"(adapter effect: mean |diff| {proof['adapter_effect']:.3g})."]
    q = proof.get("vs_4bit_base_plus_adapter")
    if q and proof.get("gated_on") == "4bit_base_plus_adapter":
        lines += ["", f"The adapter was merged into the 4-bit (NF4) rounding of the base weights it was trained "
                  f"on, saved in {proof['dtype']}: against the 4-bit base + adapter the QLoRA run trained and was "
                  f"evaluated with, max |diff| {q['max_abs_logit_diff']:.4g}, reply-token agreement "
                  f"{q['reply_top1_agreement']:.1%} (this comparison gates the export; the one above is reported)."]
    elif q:
        lines += ["", f"Against the 4-bit base + adapter the QLoRA run trained and was evaluated with: reply-token "
                  f"agreement {q['reply_top1_agreement']:.1%}, mean |diff| {q['mean_abs_logit_diff']:.3g}. A QLoRA "
                  "adapter learns on 4-bit-rounded weights and partly compensates that rounding; merged into the "
                  "original weights it no longer meets it, so this model can score lower than the QLoRA model as "
                  "evaluated. Serve the adapter on the 4-bit base to keep that behaviour."]
    return "\n".join(lines)


def training_data_section(doc: dict) -> str:
    """"Training data": every stage's data, laid out on the three parts of the EU AI Office's
    template for the public summary of training content (general information, list of data
    sources, relevant data processing); counts and licences only, never a record's content."""
    from ..data.training_data import SCHEMA, VERSION, totals

    stages = doc["stages"]
    lines = ["## Training data", "",
             f"What each training stage learnt from, in order ({len(stages)} stage(s)), laid out after the EU AI "
             "Office's template for the public summary of training content. Counts only: no record's content. "
             f"Machine-readable: `training_data.json` (schema `{SCHEMA}`, version {VERSION})"
             + ("; file paths left out (`--redact-paths`), files named by sha256." if doc.get("paths_redacted")
                else "; file paths relative to each dataset's input.") + "",
             "", "### 1. General information", "",
             "| stage | objective | method | starts from | train records | train tokens | validation records | "
             "synthetic share | licences | fingerprint |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in stages:
        train, val = totals(s, "train"), totals(s, "validation")
        licences = sorted({x for d in s.get("datasets", []) for x in d.get("licenses") or ["unknown"]})
        lines.append(f"| {s['stage']}. {s.get('name')} | {s.get('objective') or 'unknown'} | {s.get('method') or '-'} "
                     f"| {s.get('starts_from') or '-'} | {train['kept']:,} | {train['tokens']:,} | {val['kept']:,} "
                     f"| {train['synthetic_share']:.0%} | {', '.join(licences) or 'unknown'} "
                     f"| `{(s.get('fingerprint') or 'not recorded')[:12]}` |")
    every = [(s, d) for s in stages for d in s.get("datasets", [])]
    images, videos = (sum(d.get(k) or 0 for _, d in every) for k in ("images", "videos"))
    modalities = ["text"] + [f"{n:,} {k} ({sum(d.get(k[:-1] + '_tokens') or 0 for _, d in every):,} {k[:-1]} tokens)"
                             for n, k in ((images, "images"), (videos, "videos")) if n]
    lines += ["", f"Modalities (kept samples, every stage and role): {', '.join(modalities)}."]
    unrecorded = [s for s in stages if s.get("provenance")] + [d for _, d in every if d.get("provenance")]
    if unrecorded:
        lines += ["", f"Not recorded: {len(unrecorded)} stage(s) or dataset(s) carry no provenance (see below)."]
    lines += ["", "### 2. List of data sources", ""]
    groups: dict[str, list[str]] = {title: [] for title in SOURCE_GROUPS}
    for s, d in every:
        if d.get("generated"):
            groups[SOURCE_GROUPS[1]].append(f"- stage {s['stage']} {d['role']}, {_dataset_label(d)}: {d['generated']}")
        for p in [d] + ([d["prompts"]] if d.get("prompts") else []):
            for src in p.get("sources", []):
                groups[_source_group(src)].append(f"- stage {s['stage']} {p['role']}, {_dataset_label(p, brief=True)}: "
                                                  + _source_text(src))
    for s in stages:
        if s.get("provenance"):
            groups[SOURCE_GROUPS[-1]].append(f"- stage {s['stage']} ({s.get('name')}): {s['provenance']}")
    for s, d in every:
        if d.get("provenance"):
            groups[SOURCE_GROUPS[-1]].append(f"- stage {s['stage']} {d['role']}: {d['provenance']}")
    for title, rows in groups.items():
        if rows:
            lines += [f"#### {title}", "", *rows, ""]
    lines += ["### 3. Relevant data processing", "",
              "Every record was validated, rendered with the model's own chat template and processor, or "
              "quarantined with a reason code; the filters below ran where listed.", ""]
    for s in stages:
        for d in s.get("datasets", []):
            reasons = ", ".join(f"{k} {v:,}" for k, v in (d.get("quarantine_reasons") or {}).items()) or "none"
            filters = "; ".join(_filter_text(f) for f in d.get("filters") or []) or "not recorded"
            lines.append(f"- stage {s['stage']} {d['role']} ({_dataset_label(d, brief=True)}): quarantined "
                         f"{d.get('quarantined') or 0:,} ({reasons}); filters: {filters}")
    return "\n".join(lines)


SOURCE_GROUPS = ("Publicly available datasets (with a dataset card)", "Synthetic data",
                 "Other sources (files without a dataset card)", "Not recorded")


def _source_group(src: dict) -> str:
    if src.get("synthetic"):
        return SOURCE_GROUPS[1]
    return SOURCE_GROUPS[0] if src.get("dataset_card") else SOURCE_GROUPS[2]


def _source_text(src: dict) -> str:
    where = f"`{src['path']}` " if src.get("path") else ""
    scripts = ", ".join(f"{k} {v:.0%}" for k, v in (src.get("reasoning_scripts") or {}).items())
    card = f"card \"{src['card_name']}\", " if src.get("card_name") else ""
    return (f"{where}({card}sha256 `{src['sha256'][:16]}`, {src.get('file_type')}, "
            f"{', '.join(src.get('record_formats') or {}) or 'no record read'}): {src['records']:,} records, "
            f"{src['kept']:,} kept, {src['images']:,} images ({src['image_tokens']:,} image tokens), "
            f"{src['tokens']:,} tokens; licence {src.get('license') or 'unknown'}"
            + (f" (from {src['license_from']})" if src.get("license_from") else "")
            + (f"; synthetic ({src['synthetic_reason']})" if src.get("synthetic") else "")
            + (f"; reasoning written in {scripts}" if scripts else ""))


def _dataset_label(d: dict, brief: bool = False) -> str:
    name = d.get("hub_id") or d.get("name") or d.get("folder")
    label = f"`{name}`" if name else "a dataset"
    if brief:
        return label
    if d.get("kept") is not None:
        label += f", {d['kept']:,} records kept of {d.get('records') or 0:,}"
    if d.get("tokens") is not None:
        label += f", {d['tokens']:,} tokens"
    if d.get("licenses"):
        label += f", licence {', '.join(d['licenses'])}"
    if d.get("synthetic_share") is not None:
        label += f", {d['synthetic_share']:.0%} synthetic"
    return label


def _filter_text(f: dict) -> str:
    for key, verb in (("removed", "removed"), ("changed", "changed"), ("kept", "kept")):
        if key in f:
            return f"{f['filter']} {verb} {f[key]:,}"
    return f["filter"]
