"""Day 50: Activation Oracles Intro (1.3.4 Activation Oracles)."""
