"""Day 39: MLP Neuron Analysis (1.2 Intro to Mech Interp)."""
