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


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_patch_embedding_as_matmul_matches_the_convolution(family, tiny_model):
    """The vision tower's output and the patch filter's gradient agree with the Conv3d's."""
    from qvq_tune.models.loading import load_model
    from qvq_tune.train.kernels import PatchMatmulConv3d, patch_embed_as_matmul
    model = load_model(tiny_model(family))
    fam = get_family(family)
    tower = model.get_submodule(fam.vision_tower_prefix)
    grid = torch.tensor([[1, 4, 4], [1, 2, 6]])
    width = 3 * fam.temporal_patch_size * fam.patch_size ** 2
    pixels = torch.randn(int(grid.prod(-1).sum()), width, generator=torch.Generator().manual_seed(0))

    def run():
        tower.zero_grad()
        out = tower(pixels, grid_thw=grid)
        out = out.pooler_output if hasattr(out, "pooler_output") else out
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.float().square().sum().backward()
        conv = tower.patch_embed.proj
        return out.detach().clone(), conv.weight.grad.clone()
    reference, reference_grad = run()
    assert patch_embed_as_matmul(model) == 1
    assert isinstance(tower.patch_embed.proj, PatchMatmulConv3d)
    assert isinstance(tower.patch_embed.proj, torch.nn.Conv3d)        # PEFT and DeepSpeed see a Conv3d
    out, grad = run()
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-5 * float(reference_grad.abs().max()))
    conv = tower.patch_embed.proj                                   # another input shape: the convolution
    wide = torch.randn(1, 3, conv.kernel_size[0], 2 * conv.kernel_size[1], conv.kernel_size[2])
    torch.testing.assert_close(conv(wide), torch.nn.functional.conv3d(wide, conv.weight, conv.bias, conv.stride))


@pytest.mark.parametrize("matmul", [True, False])
def test_training_runs_the_patch_embedding_as_matmul(matmul, tmp_path, tiny_model, built_train, monkeypatch):
    """`kernels.patch_embed_matmul` (on by default) keeps Conv3d out of the training step."""
    from qvq_tune.data.collate import VisionCollator
    from qvq_tune.data.dataset import load_samples
    from qvq_tune.models.loading import load_processor
    from qvq_tune.train.model_setup import build_model

    from .conftest import make_recipe
    base = tiny_model("qwen2_vl")
    recipe = make_recipe(tmp_path, base, built_train["train"], method="lora",
                         **({} if matmul else {"kernels.patch_embed_matmul": False}))
    model = build_model(recipe, get_family("qwen2_vl"), str(base))
    model.train()
    calls = []
    conv3d = torch.nn.functional.conv3d
    monkeypatch.setattr(torch.nn.functional, "conv3d", lambda *a, **k: calls.append(1) or conv3d(*a, **k))
    batch = VisionCollator(load_processor(base))([load_samples(built_train["train"])[i] for i in range(2)])
    model(**batch, use_cache=False).loss.backward()
    assert bool(calls) is not matmul
