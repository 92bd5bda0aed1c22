"""Day 6: Conv Operations from Scratch (0.2 CNNs & ResNets)."""
