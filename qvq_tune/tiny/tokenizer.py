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

from ..models.registry import ModelFamily

# Qwen2's pre-tokenisation pattern (also the one Qwen2Tokenizer installs).
QWEN_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                    r"|\s*[\r\n]+|\s+(?!\S)|\s+")


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


def build_tokenizer(family: ModelFamily, corpus: list[str], bpe_vocab_size: int, *, chat_template: str):
    """A `Qwen2Tokenizer` over learnt merges plus the family's added tokens, in Qwen order."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bpe(corpus, bpe_vocab_size)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                         eos_token=None, pad_token=None)
    for content, special in family.added_tokens:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)], special_tokens=special)
    tok.eos_token = family.turn_end
    tok.pad_token = family.text_end
    tok.chat_template = chat_template
    tok.padding_side = "right"   # training pads right; generation sets left padding itself
    return tok
