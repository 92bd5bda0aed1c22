"""Day 91: Psychological Consistency Probing (4.4 Persona Vectors)."""
