"""rlhfkit: the reinforcement-learning-from-human-feedback loop, end to end."""

__version__ = "0.1.0"
