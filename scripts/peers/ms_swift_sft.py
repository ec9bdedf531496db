"""ms-swift's SFT on the benchmark's records, as `scripts/bench.py --peer ms-swift` runs it
(inside ms-swift's own virtual environment; alone, or under `torch.distributed.run` for ZeRO-3).

The records are the demo task's (`--data`: ms-swift's `messages` + `images` rows, written by the
benchmark). Before training, every record is encoded with ms-swift's template and compared with
the token ids qvq-tune built for it (`--expected-ids`, one JSON list per line): the result says
how many differ. Non-padding tokens are counted by a forward pre-hook on the model (the
attention mask's sum, or every position of a padding-free row; ms-swift's own hook has
already turned the ids into `inputs_embeds`), over all ranks; rank 0 writes
`--out` (JSON: train runtime, CPU seconds of all ranks in training, tokens, peak memory,
identical inputs).

    python ms_swift_sft.py --data swift.jsonl --model DIR --out result.json [--qlora]
        [--deepspeed zero3.json] [--padding-free] [--expected-ids ids.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


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
    ap.add_argument("--deepspeed", help="a DeepSpeed JSON (ZeRO-3 across the launched processes)")
    ap.add_argument("--padding-free", action="store_true")
    ap.add_argument("--expected-ids", help="qvq-tune's input ids per record, to check the encodings are identical")
    args = ap.parse_args()

    import ms_swift_plugin
    ms_swift_plugin.init_gloo(deepspeed=bool(args.deepspeed))
    template = ms_swift_plugin.register()

    import torch
    from swift import SftArguments
    from swift.pipelines.train.sft import SwiftSft

    quant = dict(quant_method="bnb", quant_bits=4, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                 bnb_4bit_compute_dtype=args.dtype, bnb_4bit_quant_storage=args.dtype) if args.qlora else {}
    out_dir = Path(args.out).parent / (Path(args.out).stem + "-swift")
    sft_args = SftArguments(
        model=args.model, model_type="qwen2_vl", template=template, use_hf=True, dataset=[args.data],
        tuner_type="lora", lora_rank=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
        target_modules=["all-linear"], freeze_vit=True, freeze_aligner=True, torch_dtype=args.dtype,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, max_steps=args.steps,
        learning_rate=args.lr, warmup_steps=5, logging_steps=10, save_strategy="no", report_to=["none"],
        output_dir=str(out_dir), add_version=False,
        gradient_checkpointing=False, split_dataset_ratio=0.0, dataloader_num_workers=0, dataset_num_proc=1,
        use_cpu=not torch.cuda.is_available(),     # else transformers counts one CPU process in the world
        fp16=False, bf16=args.dtype == "bfloat16",  # the precision asked for (ms-swift picks fp16 for fp32)
        seed=0, data_seed=0, deepspeed=args.deepspeed, padding_free=args.padding_free, attn_impl="sdpa",
        max_length=None, **quant)
    pipeline = SwiftSft(sft_args)
    identical = check_encodings(pipeline.template, Path(args.data), args.expected_ids)
    counter = TokenCounter()
    clock = cpu_clock()

    class Measured(SwiftSft):
        def train(self, trainer):
            # on the wrapper the trainer calls (PEFT calls the base model's `forward` directly)
            trainer.model.register_forward_pre_hook(counter, with_kwargs=True)
            trainer.add_callback(clock)
            return super().train(trainer)

    pipeline.__class__ = Measured
    result = pipeline.run()
    tokens, positions = counter.total()
    runtime = next(h["train_runtime"] for h in result["log_history"] if "train_runtime" in h)
    if int(os.environ.get("RANK", "0")) == 0:
        out = {"train_runtime_s": runtime, "num_tokens": tokens, "steps": result["global_step"],
               "counted_forwards": counter.calls,
               "padding_share": round(1 - tokens / positions, 4) if positions else None,
               "world_size": int(os.environ.get("WORLD_SIZE", "1")),
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "train_cpu_seconds": round(clock.seconds, 2) if clock.seconds is not None else None,
               "identical_input_ids": identical, "use_logits_to_keep": sft_args.training_args.use_logits_to_keep,
               "padding_free": args.padding_free, "ms_swift_template": template,
               "losses": [h["loss"] for h in result["log_history"] if "loss" in h]}
        if torch.cuda.is_available():
            out["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2 ** 20, 1)
        Path(args.out).write_text(json.dumps(out, indent=1))


def cpu_clock():
    """A trainer callback: the CPU seconds of every rank's process from the first step to the
    last, summed over ranks (`.seconds`), as qvq-tune's `train_cpu_seconds` is counted."""
    import time

    from transformers import TrainerCallback

    class CpuClock(TrainerCallback):
        seconds = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.process_time()

        def on_train_end(self, args, state, control, **kwargs):
            import torch
            import torch.distributed as dist
            total = torch.tensor([time.process_time() - self.start], dtype=torch.float64)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(total)
            self.seconds = float(total.item())
    return CpuClock()


class TokenCounter:
    """Non-padding tokens of the forwards that build a graph (training steps), this rank."""

    def __init__(self):
        self.tokens = 0
        self.positions = 0
        self.calls = 0

    def __call__(self, module, args, kwargs):
        import torch
        if not (module.training and torch.is_grad_enabled()):
            return
        self.calls += 1
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if ids is not None:
            self.positions += ids.shape[0] * ids.shape[1]
        if mask is not None and mask.ndim == 2:
            self.tokens += int(mask.sum())
        elif ids is not None:                  # a padding-free row: every position is a real token
            self.tokens += ids.shape[0] * ids.shape[1]

    def total(self) -> int:
        import torch
        import torch.distributed as dist
        count = torch.tensor([self.tokens, self.positions], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
        return int(count[0]), int(count[1])


def check_encodings(template, data: Path, expected_ids: str | None) -> dict | None:
    """{"records", "differ", "first_difference"}: ms-swift's encoding of each record against
    qvq-tune's token ids for it."""
    if not expected_ids:
        return None
    template.set_mode("train")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    expected = [json.loads(line) for line in Path(expected_ids).read_text().splitlines()]
    differ, first = 0, None
    for i, (row, ids) in enumerate(zip(rows, expected)):
        got = template.encode(dict(row))["input_ids"]
        if list(got) != ids:
            differ += 1
            first = first if first is not None else {"record": i, "ms_swift": list(got)[:80], "qvq_tune": ids[:80]}
    return {"records": len(expected), "differ": differ, "first_difference": first}


if __name__ == "__main__":
    main()
