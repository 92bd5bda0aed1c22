"""Day 34: Sampling Strategies (1.1 Transformers)."""
