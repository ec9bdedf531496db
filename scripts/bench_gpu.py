"""The GPU half of `scripts/bench.py --gpu`: a Qwen2-VL-2B-shaped model with random weights
in bf16 on one CUDA device; LoRA and QLoRA, padded and packed, with and without Liger
kernels; tokens/s, MFU and peak GPU memory of each, and the planner against the measured
peaks. Images are 448 x 448 (256 image tokens); traces follow the long-tailed spread of
the CPU benchmark.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench import ours, say, synth

RUNS = (  # name, method, packing, liger
    ("lora-padded", "lora", False, False),
    ("lora-packed", "lora", True, False),
    ("lora-packed-liger", "lora", True, True),
    ("qlora-padded", "qlora", False, False),
    ("qlora-packed", "qlora", True, False),
    ("qlora-packed-liger", "qlora", True, True),
)


def sized_model(work: Path, shape: str = "qwen2_vl-2b", *, layers: int | None = None,
                vision_depth: int | None = None) -> Path:
    """Random bf16 weights in `shape`'s architecture, with the tiny zoo's tokenizer and processor;
    `layers` / `vision_depth` keep fewer decoder layers / vision blocks (every width, the
    vocabulary and the code path unchanged) for a quick check of a script built for the full size."""
    import torch
    from transformers import AutoModelForImageTextToText

    from qvq_tune.models.shapes import config_for
    from qvq_tune.tiny.zoo import build_tiny
    out = work / (shape + (f"-L{layers}" if layers else "") + (f"-V{vision_depth}" if vision_depth else ""))
    if (out / "config.json").is_file():
        return out
    config, family = config_for(shape)
    tiny = build_tiny(family.name, work / f"tiny-tokenizer-{family.name}")
    tiny_cfg = json.loads((tiny / "config.json").read_text())
    if layers:
        config.text_config.num_hidden_layers = layers
        config.text_config.layer_types = config.text_config.layer_types[:layers] \
            if getattr(config.text_config, "layer_types", None) else None
    if vision_depth:
        config.vision_config.depth = vision_depth
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        setattr(config, key, tiny_cfg[key])
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(config.text_config, key, tiny_cfg["text_config"].get(key))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    shutil.copytree(tiny, out, ignore=shutil.ignore_patterns("model*.safetensors", "config.json"))
    model.save_pretrained(out)
    return out


def gpu(args, work: Path) -> dict:
    import torch

    from qvq_tune.train.plan import PlanRequest, plan
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)"
    say(f"GPU: {device}")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = sized_model(work)
    task = synth(work, 256, spread=True, seed=2, image_size=448)
    # the tiny processor resizes to 112 x 112 unless told otherwise: build with 448 x 448
    from qvq_tune.data.build import BuildConfig, build as run_build
    report = run_build(BuildConfig(input=str(task / "train.jsonl"), model=str(model), out=str(work / "built-gpu"),
                                   reasoning="qvq", min_pixels=448 * 448, max_pixels=448 * 448, workers=8,
                                   reuse=False))
    tokens = report["stats"]["sft"]["num_tokens"]
    results = {"device": device, "model": "qwen2_vl-2b shape, random weights, bf16",
               "data": {"samples": report["kept"], "tokens": tokens, "image_tokens": 256}, "runs": {}}
    steps = 10 if args.quick else 30
    for name, method, packing, liger in RUNS:
        say(f"run {name}")
        try:
            r = ours(work, name, model, work / "built-gpu", steps=steps, batch=8, processes=1, preset="single",
                     packing=packing, method=method, dtype="bfloat16",
                     extra={"kernels.liger": liger, "optim.gradient_checkpointing": True, "optim.logging_steps": 5,
                            "optim.lr": 1e-4})
        except RuntimeError as exc:
            results["runs"][name] = {"error": str(exc)[-800:]}
            continue
        p = plan(PlanRequest(model=str(model), method=method, gpus=1, gpu_mem=141, seq_len=round(tokens["mean"]),
                             batch_size=8, image_pixels=448 * 448, dtype="bfloat16", checkpointing=True))
        # torch's reserved peak holds everything but the CUDA context, which the planner's
        # runtime term counts as a fixed 0.75 GB: compare like with like.
        reserved = r.get("peak_gpu_reserved_mib", 0) * 2 ** 20 / 1e9
        planned = round(p.total_gb - 0.75, 2)
        results["runs"][name] = {
            "tokens_per_s": r["tokens_per_s_measured"], "mfu": r.get("mfu"), "padding_share": r.get("padding_share"),
            "peak_gpu_allocated_gb": round(r.get("peak_gpu_allocated_mib", 0) * 2 ** 20 / 1e9, 2),
            "peak_gpu_reserved_gb": round(reserved, 2), "planned_gb_without_cuda_context": planned,
            "planner_terms_gb": p.gb,
            "planner_relative_error": round(abs(planned - reserved) / reserved, 3) if reserved else None,
            "train_loss_first": r["train_loss_first"], "train_loss_last": r["train_loss_last"],
            "seconds": r["wall_seconds"]}
        say(f"  {results['runs'][name]}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results
