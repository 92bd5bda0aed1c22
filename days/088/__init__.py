"""Day 88: Chain-of-Thought Faithfulness (4.3 Interpreting Reasoning Models)."""
