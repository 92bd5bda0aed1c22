"""Day 95: Deep Dive: Deceptive Alignment (Independent research)."""
