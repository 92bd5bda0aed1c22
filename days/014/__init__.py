"""Day 14: GANs — DCGAN Implementation (0.5 VAEs & GANs)."""
