"""Day 49: SAE as Cognitive Monitor (1.3.3 SAEs)."""
