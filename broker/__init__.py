"""a2a-broker: a control layer for agent-to-agent and agent-to-LLM traffic."""

__version__ = "0.1.0"
