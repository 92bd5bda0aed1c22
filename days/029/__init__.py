"""Day 29: Module 2 Review (independent study)."""
