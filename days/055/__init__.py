"""Day 55: Circuit Discovery (1.4.1 IOI)."""
