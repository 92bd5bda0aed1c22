"""Day 83: Emergent Misalignment Study (4.1 Emergent Misalignment)."""
