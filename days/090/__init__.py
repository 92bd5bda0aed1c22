"""Day 90: Persona Vector Extraction (4.4 Persona Vectors)."""
