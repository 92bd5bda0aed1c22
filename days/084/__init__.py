"""Day 84: Misaligned Model Analysis (4.1 Emergent Misalignment)."""
