"""Day 78: Agent Scaffolding (Tool Use) (3.4 LLM Agents)."""
