"""Day 46: SAE Theory (1.3.3 SAEs)."""
