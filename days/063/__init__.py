"""Day 63: Fourier Circuits in Grokking (1.5.2 Grokking)."""
