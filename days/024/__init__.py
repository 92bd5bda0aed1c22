"""Day 24: RLHF Theory + Reward Model (2.4 RLHF)."""
