"""Evaluation: reward-model metrics, policy metrics, Pareto fronts and prompt coverage."""

from .coverage import prompt_coverage
from .pareto import pareto_front

__all__ = ["pareto_front", "prompt_coverage"]
