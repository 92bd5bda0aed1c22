"""Day 47: SAE Training on GPT-2 (1.3.3 SAEs)."""
