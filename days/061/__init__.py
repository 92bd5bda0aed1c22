"""Day 61: Bracket Circuit Reverse-Engineering (1.5.1 Brackets)."""
