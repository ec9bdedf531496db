"""Liger kernels: the same loss and gradients as transformers' own layers (where they can
run: a GPU with liger-kernel installed), and a clear refusal where they cannot."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from qvq_tune.models.registry import get_family
from qvq_tune.train.kernels import liger_problem

SCRIPT = """
import json, sys, torch
from qvq_tune.data.collate import VisionCollator
from qvq_tune.data.dataset import load_samples
from qvq_tune.models.loading import load_model, load_processor
from qvq_tune.models.registry import get_family
model_dir, data, liger = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if liger:
    from qvq_tune.train.kernels import apply_liger
    apply_liger(get_family("qwen2_vl"))
torch.manual_seed(0)
model = load_model(model_dir).cuda().train()
batch = VisionCollator(load_processor(model_dir))([load_samples(data)[i] for i in range(4)])
loss = model(**{k: v.cuda() for k, v in batch.items()}, use_cache=False).loss
loss.backward()
grads = {n: p.grad.float().norm().item() for n, p in model.named_parameters() if p.grad is not None}
print(json.dumps({"loss": loss.item(), "grads": grads}))
"""


@pytest.mark.skipif(liger_problem(get_family("qwen2_vl")) is not None,
                    reason="Liger kernels need a GPU and liger-kernel (run on the GPU machine)")
def test_liger_matches_transformers(tiny_model, built_train):
    runs = {}
    for liger in ("0", "1"):      # separate processes: Liger patches module classes
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model("qwen2_vl")), str(built_train["train"]),
                              liger], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[liger] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["1"]["loss"] == pytest.approx(runs["0"]["loss"], rel=1e-4)
    assert runs["1"]["grads"].keys() == runs["0"]["grads"].keys()
    for name, norm in runs["0"]["grads"].items():
        assert runs["1"]["grads"][name] == pytest.approx(norm, rel=1e-3, abs=1e-6), name


@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None,
                    reason="here Liger can run")
def test_liger_where_it_cannot_run_is_a_clear_error(tmp_path, tiny_model, built_train):
    from qvq_tune.errors import UserError
    from qvq_tune.recipe import recipe_from_dict
    from qvq_tune.train.run import check
    recipe = recipe_from_dict({"model": str(tiny_model("qwen2_vl")), "data": {"train": str(built_train["train"])},
                               "kernels": {"liger": True}})
    with pytest.raises(UserError, match="kernels.liger"):
        check(recipe, "r.yaml")
