"""The model-building agent (docs/agent.md): a tree search over candidate models, with fitting in
the loop, standard-law siblings and an honest plausible set."""
from .search import Agent, AgentConfig, AgentResult, run_agent

__all__ = ["Agent", "AgentConfig", "AgentResult", "run_agent"]
