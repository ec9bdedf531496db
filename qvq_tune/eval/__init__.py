"""Evaluation stage: generation, answer extraction and matching, reasoning diagnostics."""
