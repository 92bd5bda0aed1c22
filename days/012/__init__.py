"""Day 12: Train MLP with Custom Autograd + Gradient Checking (0.4 Backpropagation)."""
