"""Day 44: Function Vectors (1.3.2 Function Vectors)."""
