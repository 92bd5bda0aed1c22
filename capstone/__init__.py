"""The Alignment Researcher's Gauntlet: one sycophancy investigation of a transformer, in five parts."""
