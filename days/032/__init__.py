"""Day 32: Full GPT-2 Architecture (1.1 Transformers)."""
