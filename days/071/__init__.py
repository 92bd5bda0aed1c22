"""Day 71: Threat Models (3.1 Intro to Evals)."""
