"""Day 38: Attention Head Analysis + Induction Heads (1.2 Intro to Mech Interp)."""
