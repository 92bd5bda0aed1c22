"""Day 20: Actor-Critic (A2C) (2.2 DQN & VPG)."""
