"""Day 66: OthelloGPT — Interventions (1.5.3 OthelloGPT)."""
