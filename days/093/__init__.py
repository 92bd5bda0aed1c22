"""Day 93: Automated Investigation Experiments (4.5 Investigator Agents)."""
