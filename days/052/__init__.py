"""Day 52: Oracle Analysis + Visualization (1.3.4 Activation Oracles)."""
