"""Day 31: Transformer Blocks (1.1 Transformers)."""
