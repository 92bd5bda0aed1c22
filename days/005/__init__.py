"""Day 5: Performance Optimization (0.1 Ray Tracing)."""
