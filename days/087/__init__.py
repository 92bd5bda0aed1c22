"""Day 87: Black-box case study 2, alignment faking (4.2 Science of Misalignment)."""
