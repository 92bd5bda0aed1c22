"""Day 19: Vanilla Policy Gradient (2.2 DQN & VPG)."""
