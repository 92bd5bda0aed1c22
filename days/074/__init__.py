"""Day 74: LLM-Generated Eval Questions (3.2 Dataset Generation)."""
