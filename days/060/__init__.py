"""Day 60: Balanced Bracket Classifier (1.5.1 Brackets)."""
