"""A small byte-level BPE tokenizer with the real Qwen special tokens, for tiny models.

The BPE merges are learnt (with HF `tokenizers`) from a fixed corpus that covers the
words our synthetic tasks and system prompts use, then wrapped in transformers'
`Qwen2Tokenizer`, so pre-tokenisation, decoding and special-token handling are the
real Qwen code paths. Any text still encodes (byte fallback is inherent to byte-level
BPE); only its length differs.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from tokenizers import Regex

# Qwen2's pre-tokenisation pattern (also the one Qwen2Tokenizer installs).
QWEN_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                    r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Added tokens in the order Qwen's vocabularies number them from <|endoftext|> (151643).
# (content, special): tool/FIM/think tokens are ordinary added tokens in Qwen2.5/Qwen3.
QWEN2_VL_ADDED = [(t, True) for t in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")]
QWEN2_5_VL_ADDED = QWEN2_VL_ADDED + [
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False)]
QWEN3_VL_ADDED = QWEN2_5_VL_ADDED + [
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False)]

ADDED_TOKENS = {"qwen2_vl": QWEN2_VL_ADDED, "qwen2_5_vl": QWEN2_5_VL_ADDED,
                "qwen3_vl": QWEN3_VL_ADDED, "qwen3_vl_moe": QWEN3_VL_ADDED}


def train_bpe(corpus: list[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn byte-level BPE merges; deterministic for a given corpus and size."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def build_tokenizer(family: str, corpus: list[str], bpe_vocab_size: int, *, chat_template: str):
    """A `Qwen2Tokenizer` over learnt merges plus the family's added tokens, in Qwen order."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bpe(corpus, bpe_vocab_size)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                         eos_token=None, pad_token=None)
    for content, special in ADDED_TOKENS[family]:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)], special_tokens=special)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = chat_template
    tok.padding_side = "right"   # training pads right; generation sets left padding itself
    return tok
