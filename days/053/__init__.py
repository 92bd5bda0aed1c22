"""Day 53: IOI Task Setup (1.4.1 IOI)."""
