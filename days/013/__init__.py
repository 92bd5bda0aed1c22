"""Day 13: VAEs — Theory + ELBO Training (0.5 VAEs & GANs)."""
