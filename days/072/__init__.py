"""Day 72: Eval Specification Design (3.1 Intro to Evals)."""
