"""Day 79: Wikipedia Racing Agent (3.4 LLM Agents)."""
