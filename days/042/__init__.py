"""Day 42: Probe Analysis + Failure Modes (1.3.1 Linear Probes)."""
