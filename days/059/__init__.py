"""Day 59: SAE + IOI Combined Analysis (1.4.2 SAE Circuits)."""
