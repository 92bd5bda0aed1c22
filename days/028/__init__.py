"""Day 28: Specification Gaming (independent study)."""
