"""A plain TRL fine-tuning script, as a user would write it without qvq-tune: the baseline
`scripts/bench.py` measures qvq-tune against (same data, model, batch size, LoRA rank,
precision and steps).

TRL's defaults throughout: `SFTTrainer` with its vision collator on conversational rows
(`messages` + `images`, rendered and tokenised per batch, loss on every non-pad token),
LoRA on the seven language-model projections, QLoRA through a `BitsAndBytesConfig` that
keeps the output head, the vision tower and the merger out of 4-bit. Run it alone or under `accelerate launch`;
rank 0 writes `--out` (JSON: train runtime, tokens, peak memory).

    python scripts/trl_baseline.py --data train.jsonl --model DIR --out result.json [--qlora]
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path


def rows(path: Path) -> list[dict]:
    from PIL import Image
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        reply = rec["answer"] if not rec.get("reasoning") else \
            f"{rec['reasoning']}\n\n**Final Answer**\n\n\\[ \\boxed{{{rec['answer']}}} \\]"
        out.append({"images": [Image.open(path.parent / p).convert("RGB") for p in rec.get("images", [])],
                    "messages": [{"role": "user", "content": [{"type": "image"} for _ in rec.get("images", [])]
                                  + [{"type": "text", "text": rec["question"]}]},
                                 {"role": "assistant", "content": [{"type": "text", "text": reply}]}]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--qlora", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--profile", help="profile steps START:N with qvq-tune's step profiler into this folder "
                                      "(DIR:START:N), for side-by-side profiles; off by default")
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    dtype = getattr(torch, args.dtype)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype,
                               # the output head, the vision tower and its merger stay out of 4-bit, as
                               # in qvq-tune (transformers matches these from the start of module names)
                               llm_int8_skip_modules=["lm_head", "model.visual"]) if args.qlora else None
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype, quantization_config=quant)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    config = SFTConfig(output_dir=str(Path(args.out).parent / "trl_checkpoints"), max_steps=args.steps,
                       per_device_train_batch_size=args.batch, learning_rate=args.lr, warmup_steps=5,
                       logging_steps=10, save_strategy="no", report_to="none", max_length=None, seed=0,
                       bf16=args.dtype == "bfloat16", use_cpu=not torch.cuda.is_available(),
                       dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows(Path(args.data))),
                         processing_class=processor, peft_config=lora)
    if args.profile:
        from qvq_tune.train.profile import StepProfiler
        folder, start, steps = args.profile.rsplit(":", 2)
        trainer.add_callback(StepProfiler(folder, int(start), int(steps)))
    result = trainer.train()
    if trainer.is_world_process_zero():
        tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
        out = {"train_runtime_s": result.metrics["train_runtime"], "num_tokens": tokens[-1],
               "world_size": trainer.args.world_size, "steps": result.global_step,
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "trainable_dtypes": sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad})}
        if torch.cuda.is_available():
            out["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2 ** 20, 1)
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
