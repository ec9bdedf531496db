"""The smallest ms-swift plugin that lets its SFT train qvq-tune's tiny Qwen2-VL models on CPU,
for `scripts/bench.py --peer ms-swift` (runs inside ms-swift's own virtual environment).

1. A template `qwen2_vl_own_vocab`: ms-swift's `qwen2_vl` template with the image- and
   video-token ids read from the tokenizer. The stock template hard-codes Qwen's ids
   (151655 / 151656), which on a vocabulary of our own leaves one image token per sample,
   with no error, and a model that never sees the image.
2. `init_gloo()`: under `torch.distributed.run` on CPU, the process group is started with
   gloo, and DeepSpeed's communication on it, before ms-swift and transformers look for an
   accelerator backend, so DeepSpeed ZeRO-3 runs across CPU processes as it does for
   qvq-tune and TRL (whose `accelerate launch` does the same).
"""

from __future__ import annotations

import os


def init_gloo(deepspeed: bool) -> None:
    """On CPU ranks: torch's process group with gloo, and DeepSpeed's communication layer on top
    of it (neither transformers nor accelerate starts DeepSpeed's on CPU, so ZeRO-3 would count
    one process in the world and reject the batch size)."""
    import torch
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    if deepspeed:
        import deepspeed as ds
        ds.init_distributed(dist_backend="gloo")


def register() -> str:
    from swift.template import register_template
    from swift.template.templates.qwen import Qwen2VLTemplate, QwenTemplateMeta

    class OwnVocabQwen2VLTemplate(Qwen2VLTemplate):
        def init_processor(self, processor) -> None:
            super().init_processor(processor)
            if processor is not None:
                tokenizer = getattr(processor, "tokenizer", processor)
                self.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
                self.video_token_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")

    name = "qwen2_vl_own_vocab"
    register_template(QwenTemplateMeta(name, template_cls=OwnVocabQwen2VLTemplate), exist_ok=True)
    return name
