"""Day 69: SAE on Superposition Model (1.5.4 Superposition)."""
