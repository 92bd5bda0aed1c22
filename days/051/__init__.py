"""Day 51: Hidden Knowledge Probing (1.3.4 Activation Oracles)."""
