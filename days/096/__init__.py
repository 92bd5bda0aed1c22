"""Day 96: Deep Dive: Scalable Oversight (independent research: weak-to-strong generalization)."""
