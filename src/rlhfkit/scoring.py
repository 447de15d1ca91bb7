"""Scoring callables named as `module:function`, with the signature f(prompts, responses) -> list[float]."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .errors import ConfigError

Scorer = Callable[[list[str], list[str]], list[float]]
DEFAULT_GOLD = "rlhfkit.demo.gold:score"


def load_scorer(spec: str, option: str = "gold") -> Scorer:
    """Import `module:function`; 'default' is the review task's gold judge."""
    spec = DEFAULT_GOLD if spec == "default" else spec
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{option}: '{spec}' is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{option}: cannot import module '{module_name}' ({exc})") from None
    scorer = getattr(module, attr, None)
    if not callable(scorer):
        raise ConfigError(f"{option}: module '{module_name}' has no function '{attr}'")
    return scorer


def call_scorer(scorer: Scorer, prompts: list[str], responses: list[str], option: str = "gold") -> list[float]:
    scores = list(scorer(prompts, responses))
    if len(scores) != len(responses):
        raise ConfigError(f"{option}: the scorer returned {len(scores)} scores for {len(responses)} responses")
    return [float(s) for s in scores]
