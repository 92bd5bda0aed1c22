"""Day 64: Grokking — Progress Measures (1.5.2 Grokking)."""
