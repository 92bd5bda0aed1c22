"""Day 10: Weights & Biases + Hyperparameter Sweeps (0.3 Optimization)."""
