"""Day 36: Logit Lens (1.2 Intro to Mech Interp)."""
