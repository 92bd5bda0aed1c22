"""Day 33: Load Pretrained Weights (1.1 Transformers)."""
