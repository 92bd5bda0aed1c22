"""Day 18: Deep Q-Network (DQN) (2.2 DQN & VPG)."""
