"""Day 68: Superposition — Feature Geometry (1.5.4 Superposition)."""
