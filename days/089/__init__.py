"""Day 89: Reasoning Model Interpretability (4.3 Interpreting Reasoning Models)."""
