"""Day 54: Path Patching (1.4.1 IOI)."""
