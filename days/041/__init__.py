"""Day 41: Probe Implementation on Coup (1.3.1 Linear Probes)."""
