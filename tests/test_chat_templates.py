"""Shipped chat templates are pinned by hash and match the copies TRL ships byte for byte."""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

import pytest

TEMPLATES = resources.files("qvq_tune.models").joinpath("chat_templates")


def _pinned() -> dict[str, str]:
    text = TEMPLATES.joinpath("SOURCES.md").read_text()
    return dict(re.findall(r"\| `([\w.]+\.jinja)` \|[^|]*\| `([0-9a-f]{64})` \|", text))


def test_every_template_matches_its_pinned_hash():
    pinned = _pinned()
    shipped = sorted(p.name for p in Path(str(TEMPLATES)).glob("*.jinja"))
    assert sorted(pinned) == shipped
    for name, digest in pinned.items():
        assert hashlib.sha256(TEMPLATES.joinpath(name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("ours,trls", [("qwen2_vl.jinja", "qwen2_5_vl.jinja"),
                                       ("qwen2_5_vl.jinja", "qwen2_5_vl.jinja"),
                                       ("qwen3_vl_instruct.jinja", "qwen3_vl.jinja")])
def test_templates_equal_trls_copies(ours, trls):
    import trl
    theirs = Path(trl.__file__).parent / "chat_templates" / trls
    if not theirs.is_file():
        pytest.skip(f"this TRL release ships no {trls}")
    assert TEMPLATES.joinpath(ours).read_bytes() == theirs.read_bytes()


def test_qvq_template_defaults_to_the_qvq_system_prompt(tiny_model):
    from transformers import AutoProcessor
    from qvq_tune.models.registry import chat_template_text
    qvq = chat_template_text("qvq.jinja")
    assert "You are Qwen developed by Alibaba" in qvq and "You should think step-by-step." in qvq
    proc = AutoProcessor.from_pretrained(tiny_model("qwen2_vl"))
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                    tokenize=False, chat_template=qvq)
    assert text.startswith("<|im_start|>system\nYou are a helpful and harmless assistant.")
