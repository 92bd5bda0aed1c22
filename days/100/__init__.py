"""Day 100: Capstone: Research Proposal (independent research)."""
