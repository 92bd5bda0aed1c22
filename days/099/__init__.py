"""Day 99: Full Curriculum Review + Research Gaps (independent research)."""
