"""Day 11: Autograd Engine + Chain Rule (0.4 Backpropagation)."""
