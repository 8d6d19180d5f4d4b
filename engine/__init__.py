"""flowrunner: declarative YAML flows of LLM agents, code steps and approval gates."""
