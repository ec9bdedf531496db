"""Training stage: typed recipes, collators, and short setup flows around TRL's trainers."""
