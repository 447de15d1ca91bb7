"""Evaluation: reward-model metrics, policy metrics."""
