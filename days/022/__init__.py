"""Day 22: PPO Implementation (2.3 PPO)."""
