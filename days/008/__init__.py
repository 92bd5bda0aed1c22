"""Day 8: ResNets — Architecture + CIFAR-10 Training (0.2 CNNs & ResNets)."""
