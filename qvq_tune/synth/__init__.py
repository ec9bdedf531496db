"""Synthetic images and tasks: the tiny base's pre-training data and "proprietary diagram" tasks."""
