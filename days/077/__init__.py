"""Day 77: Custom Eval in Inspect (3.3 Running Evals)."""
