"""Day 3: Ray Tracing Intro + Batched Rays (0.1 Ray Tracing)."""
