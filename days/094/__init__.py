"""Day 94: Investigator Agent Evaluation (4.5 Investigator Agents)."""
