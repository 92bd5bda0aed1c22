"""Day 7: MNIST Classifier (0.2 CNNs & ResNets)."""
