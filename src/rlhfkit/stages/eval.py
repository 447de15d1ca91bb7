"""`rlhfkit eval`: compare policies on held-out prompts. The work is rlhfkit.evaluate.policy.run, which the gate
runs too."""

from ..config import EvalConfig
from ..evaluate.policy import run

__all__ = ["EvalConfig", "run"]
