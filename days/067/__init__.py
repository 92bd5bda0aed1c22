"""Day 67: Superposition — Toy Model Replication (1.5.4 Superposition)."""
