"""Day 1: PyTorch, einops, einsum (ARENA 0.0 Prerequisites)."""
