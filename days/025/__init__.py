"""Day 25: Full RLHF Pipeline (2.4 RLHF)."""
