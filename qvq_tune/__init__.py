"""qvq-tune: adapt Qwen's multimodal reasoning models to your own images.

Stages, each in its own sub-package, data flowing one way:
records (data/readers) -> messages (data/messages) -> samples (data/render)
-> batches (train/collators) -> trainer (train/) -> run folder -> export (export/).
"""

__version__ = "0.1.0"
