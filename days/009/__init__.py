"""Day 9: SGD + Adam from Scratch (0.3 Optimization)."""
