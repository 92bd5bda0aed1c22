"""Day 70: Module 1 Review (independent study)."""
