"""Day 85: Mitigation Experiments (4.1 Emergent Misalignment)."""
