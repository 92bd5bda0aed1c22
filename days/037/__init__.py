"""Day 37: Hooks Deep Dive (1.2 Intro to Mech Interp)."""
