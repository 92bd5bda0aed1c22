"""Day 16: Q-Learning & Tabular RL (2.1 Intro to RL)."""
