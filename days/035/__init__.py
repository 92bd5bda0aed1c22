"""Day 35: TransformerLens Setup & Activations (1.2 Intro to Mech Interp)."""
