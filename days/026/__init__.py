"""Day 26: RLHF — Interpretability Lens (2.4 RLHF)."""
