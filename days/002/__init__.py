"""Day 2: Tensor manipulation + linear algebra in code (ARENA 0.0 Prerequisites)."""
