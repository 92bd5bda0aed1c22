"""Day 86: Black-box case study 1, shutdown resistance (4.2 Science of Misalignment)."""
