"""Day 40: Probing Theory (1.3.1 Linear Probes)."""
