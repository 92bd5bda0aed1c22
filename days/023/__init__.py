"""Day 23: PPO Debugging & Analysis (2.3 PPO)."""
