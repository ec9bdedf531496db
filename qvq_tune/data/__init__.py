"""Data stage: user files -> records -> canonical messages -> samples (token ids + labels + media)."""
