"""Family knowledge stays in the registry (`qvq_tune/models/`): code elsewhere never branches
on a family's name, keys tables by it, or spells out a chat-control token."""

from __future__ import annotations

import ast
import re

import pytest

from qvq_tune.models.registry import FAMILIES

from .conftest import REPO

PACKAGE = REPO / "qvq_tune"
OUTSIDE = sorted(p for p in PACKAGE.rglob("*.py") if PACKAGE / "models" not in p.parents)
CONTROL = re.compile(r"<\|[a-z_]+\|>|</?think>")


def _is_family_name(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and (
        node.value in FAMILIES or node.value.startswith("qwen"))


def family_branches(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            sides += [e for s in sides if isinstance(s, (ast.Tuple, ast.List, ast.Set)) for e in s.elts]
            if any(_is_family_name(s) for s in sides):
                found.append(f"line {node.lineno}: comparison with a family name")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("startswith", "endswith") and any(_is_family_name(a) for a in node.args):
            found.append(f"line {node.lineno}: {node.func.attr}() on a family name")
        elif isinstance(node, ast.Dict) and any(k is not None and _is_family_name(k) for k in node.keys):
            found.append(f"line {node.lineno}: a table keyed by family name")
    return found


def test_the_checks_catch_what_they_look_for():
    assert family_branches('if fam.name == "qwen2_vl":\n    pass')
    assert family_branches('x = fam.name.startswith("qwen3")')
    assert family_branches('if name in ("qwen3_vl", "qwen3_vl_moe"):\n    pass')
    assert family_branches('TOKENS = {"qwen2_vl": 1}')
    assert not family_branches('build_tiny("qwen2_vl", out)')
    assert CONTROL.search('eos = "<|im_end|>"') and CONTROL.search("'</think>'")


@pytest.mark.parametrize("path", OUTSIDE, ids=[str(p.relative_to(PACKAGE)) for p in OUTSIDE])
def test_no_family_branch_or_control_token_outside_the_registry(path):
    source = path.read_text(encoding="utf-8")
    assert not family_branches(source), family_branches(source)
    tokens = [f"line {n}: {m.group()}" for n, line in enumerate(source.splitlines(), 1)
              for m in CONTROL.finditer(line)]
    assert not tokens, f"chat-control tokens belong in the family record: {tokens}"
