"""Day 98: Independent Experiment — Analysis (Independent research)."""
