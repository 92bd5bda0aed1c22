"""Day 17: Policy & Value Iteration (2.1 Intro to RL)."""
