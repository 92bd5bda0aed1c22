"""Day 73: Eval Pitfalls + Benchmark Gaming (3.1 Intro to Evals)."""
