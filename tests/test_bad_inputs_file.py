"""A committed file mixing good and bad records: each bad one lands in the quarantine with
its line and reason, the good ones are kept, nothing is lost."""

from __future__ import annotations

import json

from qvq_tune.data.build import BuildConfig, build

from .conftest import REPO

DATA = REPO / "tests" / "data" / "mixed_bad.jsonl"
EXPECTED = {  # line -> reason code
    2: "duplicate", 3: "missing_media", 4: "empty_file", 5: "corrupt_media", 6: "path_escape",
    7: "remote_url", 8: "empty_assistant", 9: "malformed_json", 10: "placeholder_mismatch",
    11: "special_token_in_text", 13: "unknown_schema",
}


def test_mixed_file_quarantines_each_bad_line_with_its_reason(tiny_model, tmp_path):
    report = build(BuildConfig(input=str(DATA), model=str(tiny_model("qwen2_vl")), out=str(tmp_path / "out"),
                               workers=1))
    rows = [json.loads(l) for l in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert {r["line"]: r["reason"] for r in rows} == EXPECTED
    assert all(r["source"].endswith("mixed_bad.jsonl") and r["message"] for r in rows)
    assert report["input_records"] == 13 == report["kept"] + report["quarantined"]
    assert report["kept"] == 2 and report["quarantined"] == len(EXPECTED)
    assert report["quarantine_reasons"] == {code: list(EXPECTED.values()).count(code) for code in set(EXPECTED.values())}
