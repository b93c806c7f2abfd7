"""Rollout: the plan in the registry, the sequential test, the decision, traffic."""
