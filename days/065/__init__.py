"""Day 65: OthelloGPT World Model Analysis (1.5.3 OthelloGPT)."""
