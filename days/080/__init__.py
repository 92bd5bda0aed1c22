"""Day 80: Agent Eval Suite (3.4 LLM Agents)."""
