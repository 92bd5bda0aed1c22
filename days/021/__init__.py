"""Day 21: PPO Theory + Clipped Objective (2.3 PPO)."""
