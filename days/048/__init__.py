"""Day 48: Feature Interpretation (1.3.3 SAEs)."""
