"""Day 30: Attention Mechanism (1.1 Transformers)."""
