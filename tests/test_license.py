"""Licence check and gating, on the real licence texts and model cards in tests/data/licenses/.

Classification is by distinctive clauses, text first and card second; truncated or edited
copies are not misread. Every export is gated: refused without `--accept-license`, and with
it the folder carries the base's LICENSE, a NOTICE where the licence asks for one, and a
card whose front matter and banners match the licence.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from qvq_tune import presets
from qvq_tune.errors import UserError
from qvq_tune.models.license import classify

from .conftest import REPO
from .test_export_adapter import make_adapter

DATA = REPO / "tests" / "data" / "licenses"
TEXTS = {"apache-2.0": "apache-2.0.txt", "qwen": "qwen.txt", "qwen-research": "qwen-research.txt",
         "tongyi-qianwen": "tongyi-qianwen.txt"}


def folder_with(tmp_path, license_text: str | None = None, card: str | None = None, name: str = "m"):
    folder = tmp_path / name
    folder.mkdir()
    if license_text is not None:
        (folder / "LICENSE").write_text(license_text, encoding="utf-8")
    if card is not None:
        shutil.copy(DATA / "cards" / card, folder / "README.md")
    return folder


def text(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("expected,file", TEXTS.items())
def test_each_real_licence_text_is_recognised_by_its_clauses(expected, file, tmp_path):
    report = classify(folder_with(tmp_path, text(file)))
    assert report.license == expected and report.source == "text"
    assert report.evidence and all(e.file == "LICENSE" and e.line >= 1 and e.text for e in report.evidence)
    lines = text(file).splitlines()
    assert all(e.text == lines[e.line - 1].strip()[:200] for e in report.evidence)


@pytest.mark.parametrize("card,expected", [
    ("qvq-72b-preview.md", "qwen"), ("qwen2-vl-72b-instruct.md", "tongyi-qianwen"),
    ("openbuddy-qwen-7b.md", "tongyi-qianwen"), ("qwen2-vl-7b-instruct.md", "apache-2.0"),
    ("qwen2.5-vl-3b-instruct-relicensed.md", "unknown"),      # license: mit, which qvq-tune does not gate on
])
def test_without_a_licence_file_the_card_front_matter_decides(card, expected, tmp_path):
    report = classify(folder_with(tmp_path, card=card))
    assert (report.license, report.source) == (expected, "card")
    assert report.hint and "no LICENSE" in report.hint


@pytest.mark.parametrize("file,card,expected,card_says", [
    ("qwen.txt", "qwen2-vl-72b-instruct.md", "qwen", "tongyi-qianwen"),   # as on the Hub
    ("qwen-research.txt", "qwen2.5-vl-3b-instruct-relicensed.md", "qwen-research", "mit"),
    ("qwen-research.txt", "qwen2-vl-7b-instruct.md", "qwen-research", "apache-2.0"),
])
def test_when_text_and_card_disagree_the_text_wins_and_it_is_reported(file, card, expected, card_says, tmp_path):
    report = classify(folder_with(tmp_path, text(file), card))
    assert report.license == expected and report.source == "text"
    assert report.disagreement and card_says in report.disagreement and "the text is trusted" in report.disagreement


def test_the_same_card_agreeing_with_its_text_reports_nothing(tmp_path):
    report = classify(folder_with(tmp_path, text("qwen.txt"), "qvq-72b-preview.md"))
    assert report.license == "qwen" and report.disagreement is None


@pytest.mark.parametrize("make", [
    lambda: "\n".join(text("qwen.txt").splitlines()[:14]),            # title + definitions only
    lambda: "\n".join(text("qwen-research.txt").splitlines()[:16]),           # cut before the grant
    lambda: text("qwen-research.txt").replace("Qwen RESEARCH LICENSE AGREEMENT", "Qwen LICENSE AGREEMENT"),
    lambda: text("tongyi-qianwen.txt").replace("to improve any other large language model", "for anything"),
    lambda: "This model is released under the Apache License 2.0 and the Qwen LICENSE AGREEMENT.\n",
    lambda: text("apache-2.0.txt")[:400],                                      # the title block alone
])
def test_truncated_or_edited_copies_are_not_misread(make, tmp_path):
    report = classify(folder_with(tmp_path, make(), "qvq-72b-preview.md"))
    assert report.license == "unknown" and report.source == "text"
    assert "qwen" in report.disagreement                                      # the card's claim is still shown


def test_an_apache_licence_header_is_recognised(tmp_path):
    header = ('Licensed under the Apache License, Version 2.0 (the "License");\nyou may not use this file except '
              'in compliance with the License.\nYou may obtain a copy of the License at\n\n'
              '    http://www.apache.org/licenses/LICENSE-2.0\n')
    assert classify(folder_with(tmp_path, header)).license == "apache-2.0"


def test_license_check_cli_json(tmp_path):
    folder = folder_with(tmp_path, text("qwen.txt"), "qwen2-vl-72b-instruct.md")
    out = subprocess.run([sys.executable, "-m", "qvq_tune", "license", "check", str(folder), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["license"] == "qwen" and report["commercial_use"] == "conditional"
    assert report["requires_acceptance"] is True
    assert any("100 million monthly active users" in c for c in report["conditions"])
    assert any("Built with Qwen" in c for c in report["conditions"])
    assert {e["clause"] for e in report["evidence"]} >= {"qwen.title", "mau_threshold", "built_with_qwen"}
    assert "tongyi-qianwen" in report["disagreement"]
    plain = subprocess.run([sys.executable, "-m", "qvq_tune", "license", "check", str(folder)],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and plain.stdout.startswith("licence: qwen (Qwen LICENSE AGREEMENT), from text")


def test_the_packaged_licence_texts_equal_the_recorded_ones():
    packaged = presets.license_files()
    assert sorted(packaged) == ["apache-2.0", "qwen", "qwen-research"]
    for license_id, path in packaged.items():
        assert filecmp.cmp(path, DATA / path.name, shallow=False), path.name
        assert classify_text(presets.license_text(license_id)) == license_id


@pytest.mark.parametrize("license_id,sections,last", [
    ("qwen", 9, "9. Governing Law and Jurisdiction."),
    ("qwen-research", 9, "9. Other Terms and Conditions."),
])
def test_the_qwen_agreements_are_shipped_whole(license_id, sections, last):
    """The full agreements (every numbered section, the closing clause), not an excerpt:
    an export copies this text as the base's LICENSE, and the agreement asks that every
    recipient gets a copy of it."""
    body = presets.license_text(license_id)
    numbered = [line for line in body.splitlines() if line[:1].isdigit() and line[1:3] == ". "]
    assert [int(line.split(".")[0]) for line in numbered] == list(range(1, sections + 1))
    assert numbered[-1] == last and "[...]" not in body
    assert "The People's Courts in Hangzhou City shall have exclusive jurisdiction" in body
    assert len(body.encode()) > 6000


def classify_text(body: str) -> str:
    from qvq_tune.models.license import find_clauses, recognise
    found = recognise(find_clauses(body, "LICENSE"))
    return found[0] if len(found) == 1 else "unknown"


# ---- the gate ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    return make_adapter(tiny_model("qwen2_vl"), tmp_path_factory.mktemp("gate") / "adapter")


def licensed_base(tiny_model, tmp_path, license_id: str | None, *, notice: str | None = None):
    base = shutil.copytree(tiny_model("qwen2_vl"), tmp_path / f"base-{license_id}")
    (base / "LICENSE").unlink()
    if license_id:
        (base / "LICENSE").write_text(text(TEXTS[license_id]), encoding="utf-8")
    if notice:
        (base / "NOTICE").write_text(notice)
    return base


def export(base, adapter, out, accept=None):
    from qvq_tune.export.run import AdapterRequest, export_adapter
    return export_adapter(AdapterRequest(out=out, base=base, adapter=adapter, accept_license=accept))


def card_meta(folder) -> tuple[dict, str]:
    body = (folder / "README.md").read_text()
    _, meta, rest = body.split("---\n", 2)
    return yaml.safe_load(meta), rest


@pytest.mark.parametrize("license_id", ["qwen", "qwen-research", "tongyi-qianwen"])
def test_qwen_licences_are_refused_without_acceptance(license_id, tiny_model, adapter, tmp_path):
    base = licensed_base(tiny_model, tmp_path, license_id)
    with pytest.raises(UserError, match=f"pass --accept-license {license_id}") as e:
        export(base, adapter, tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    with pytest.raises(UserError, match=f"--accept-license apache-2.0 was given, but .* is {license_id}"):
        export(base, adapter, tmp_path / "out", accept="apache-2.0")


@pytest.mark.parametrize("license_id,notice_line,attribution,banner", [
    ("qwen", "Qwen is licensed under the Qwen LICENSE AGREEMENT", True, False),
    ("qwen-research", "Qwen is licensed under the Qwen RESEARCH LICENSE AGREEMENT", True, True),
    ("tongyi-qianwen", "Tongyi Qianwen is licensed under the Tongyi Qianwen LICENSE AGREEMENT", False, False),
])
def test_accepted_exports_carry_licence_notice_and_card(license_id, notice_line, attribution, banner,
                                                         tiny_model, adapter, tmp_path):
    base = licensed_base(tiny_model, tmp_path, license_id)
    out = tmp_path / "out"
    report = export(base, adapter, out, accept=license_id)
    assert report["license"]["license"] == license_id and report["accepted_license"] == license_id
    assert (out / "LICENSE").read_bytes() == (base / "LICENSE").read_bytes()
    notice = (out / "NOTICE").read_text()
    assert notice.startswith(notice_line) and "Modified files:" in notice
    meta, body = card_meta(out)
    assert meta["license"] == "other" and meta["license_name"] == license_id and meta["license_link"] == "LICENSE"
    assert meta["base_model"] == "qvq-tune/tiny-qwen2_vl" and meta["base_model_relation"] == "adapter"
    assert ("**Built with Qwen.**" in body) == attribution
    assert ("**Non-commercial.**" in body) == banner
    assert f"--accept-license {license_id}" in body
    if license_id == "tongyi-qianwen":
        assert "improve any other large language model" in body


def test_apache_proceeds_without_acceptance_and_carries_the_bases_notice(tiny_model, adapter, tmp_path):
    base = licensed_base(tiny_model, tmp_path, "apache-2.0", notice="Copyright 2024 Alibaba Cloud")
    out = tmp_path / "out"
    export(base, adapter, out)
    meta, body = card_meta(out)
    assert meta["license"] == "apache-2.0" and "license_name" not in meta and "Built with Qwen" not in body
    assert (out / "NOTICE").read_text().startswith("Copyright 2024 Alibaba Cloud")


def test_an_unknown_or_missing_licence_needs_accept_unknown(tiny_model, adapter, tmp_path):
    base = licensed_base(tiny_model, tmp_path, None)
    with pytest.raises(UserError, match="licence is unknown: the folder has no LICENSE.*--accept-license unknown"):
        export(base, adapter, tmp_path / "out")
    export(base, adapter, tmp_path / "out", accept="unknown")
    meta, _ = card_meta(tmp_path / "out")
    assert meta["license"] == "other" and meta["license_name"] == "unknown"
    assert not (tmp_path / "out" / "LICENSE").exists()


def test_the_zoo_writes_its_own_licence(tiny_model):
    assert classify(tiny_model("qwen3_vl")).license == "apache-2.0"
    from qvq_tune.tiny.pretrain import BaseRecipe
    assert BaseRecipe().spec.license == "qwen"       # the tiny base stands in for QVQ-72B-Preview


def test_a_refused_export_is_one_line_on_the_cli(tiny_model, adapter, tmp_path):
    base = licensed_base(tiny_model, tmp_path, "qwen-research")
    out = subprocess.run([sys.executable, "-m", "qvq_tune", "export", "merge", "--base", str(base), "--adapter",
                          str(adapter), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pass --accept-license qwen-research" in lines[0] and "NON-COMMERCIAL" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["adapter", "merge"])
def test_a_wrong_acceptance_leaves_nothing_at_out(kind, tiny_model, adapter, tmp_path):
    """Accepting another licence than the base's is refused before anything is written: no
    folder at --out, no temporary folder or failure report beside it, and an earlier export
    at --out (replaced only with --force) is left as it was."""
    from qvq_tune.export.run import AdapterRequest, MergeRequest, export_adapter, export_merge
    base = licensed_base(tiny_model, tmp_path, "qwen-research")
    exports = tmp_path / "exports"
    exports.mkdir()

    def run(out, accept, force=False):
        if kind == "adapter":
            return export_adapter(AdapterRequest(out=out, base=base, adapter=adapter, accept_license=accept,
                                                 force=force))
        return export_merge(MergeRequest(out=out, base=base, adapter=adapter, accept_license=accept, force=force,
                                         samples=1))
    for accept in ("qwen", "apache-2.0", "unknown"):
        with pytest.raises(UserError, match=f"--accept-license {accept} was given, but .* is qwen-research"):
            run(exports / "out", accept)
    assert list(exports.iterdir()) == []
    earlier = exports / "earlier"
    earlier.mkdir()
    (earlier / "README.md").write_text("an earlier export")
    with pytest.raises(UserError, match="--accept-license qwen was given"):
        run(earlier, "qwen", force=True)
    assert [p.name for p in exports.iterdir()] == ["earlier"]
    assert [p.name for p in earlier.iterdir()] == ["README.md"]
    assert (earlier / "README.md").read_text() == "an earlier export"


@pytest.mark.parametrize("prefix", ["\ufeff", "\n", ""], ids=["byte-order-mark", "leading-newline", "plain"])
def test_card_front_matter_is_read_as_huggingface_hub_reads_it(prefix, tmp_path):
    """A README saved with a byte-order mark (Windows editors) or a blank first line still
    names its licence: the card is read by `huggingface_hub.ModelCard`, as the Hub reads it."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "README.md").write_text(prefix + "---\r\nlicense: other\r\nlicense_name: qwen-research\r\n---\r\n# m\r\n",
                                      encoding="utf-8")
    report = classify(folder)
    assert (report.license, report.source, report.card["license_name"]) == ("qwen-research", "card", "qwen-research")


def test_an_export_card_reads_back_through_huggingface_hub(tmp_path):
    from huggingface_hub import ModelCard

    from qvq_tune.export.card import front_matter, model_card
    from qvq_tune.models.license import front_matter as read_front_matter
    base = folder_with(tmp_path, text("qwen-research.txt"), name="base")
    report = classify(base)
    meta = front_matter(report, base_model="Qwen/Qwen2.5-VL-3B-Instruct", relation="adapter", library="peft",
                        tags=["qvq-tune", "lora"], datasets=["train.jsonl"], has_license_file=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text(model_card(meta, "my-export", report, "qwen-research", ["## Training\n\nok"]))
    card = ModelCard.load(out / "README.md")
    assert card.data.to_dict() == meta == read_front_matter(out)
    assert list(card_meta(out)[0]) == list(meta)                         # written in the order given
    assert card.text.lstrip().startswith("# my-export") and "**Non-commercial.**" in card.text
    assert "## Training\n\nok" in card.text
