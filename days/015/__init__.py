"""Day 15: MDPs, Bandits, Value Functions (2.1 Intro to RL)."""
