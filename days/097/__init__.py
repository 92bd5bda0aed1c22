"""Day 97: Independent Experiment — Design + Run (Independent research)."""
