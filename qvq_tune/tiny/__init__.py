"""Tiny offline models: the zoo (a small random checkpoint of every family), its tokenizer,
the pre-trained tiny base that is the embedded default, and model-name resolution.

Sits above the training and evaluation stages: the tiny base is pre-trained by the same
builder and trainer users' runs take, and checked by the same evaluator.
"""
