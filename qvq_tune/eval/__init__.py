"""Evaluation stage: generation, scoring with the answer extraction and reasoning diagnostics
of `data/answers.py` and `data/diagnostics.py`, summaries, reports and comparisons."""
