"""Day 82: Module 3 Review + Eval Report (independent study)."""
