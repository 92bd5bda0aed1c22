"""Day 58: Feature Tracing Through Layers (1.4.2 SAE Circuits)."""
