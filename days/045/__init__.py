"""Day 45: nnsight & Activation Steering (1.3.2 Function Vectors)."""
