"""Day 4: Triangle Meshes + Full Render Pipeline (0.1 Ray Tracing)."""
