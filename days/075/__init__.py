"""Day 75: Dataset Validation Pipeline (3.2 Dataset Generation)."""
