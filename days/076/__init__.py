"""Day 76: Inspect Setup + First Eval (3.3 Running Evals)."""
