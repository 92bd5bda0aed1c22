"""Day 27: Reward Hacking (independent study)."""
