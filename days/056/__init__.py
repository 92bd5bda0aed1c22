"""Day 56: Circuit Validation via Ablation (1.4.1 IOI)."""
