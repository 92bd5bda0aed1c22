"""Day 57: SAE Circuit Theory (1.4.2 SAE Circuits)."""
