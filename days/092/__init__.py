"""Day 92: Investigator Agent Setup (4.5 Investigator Agents)."""
