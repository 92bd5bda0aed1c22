"""Day 43: Activation Patching (1.3.2 Function Vectors)."""
