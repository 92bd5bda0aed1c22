"""Day 81: Evals + Interpretability Crossover (independent study)."""
