"""Day 62: Grokking — Train + Observe (1.5.2 Grokking)."""
