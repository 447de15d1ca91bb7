"""The gold judge of the default task: review sentiment by VADER, minus a penalty for degenerate repetition.

    gold(response) = clip(compound(response) - 1.5 * repeat_share(response), -1, 1)

`compound` is VADER's normalised sentiment in [-1, 1] (vaderSentiment, Hutto & Gilbert 2014; nobody here
wrote it). `repeat_share` is the share of word trigrams in the response that repeat an earlier trigram
(0 for a response of fewer than four words; lower-cased, punctuation stripped). An empty response scores -1.
Nothing trains on this judge directly: the simulated panel labels pairs from it, with noise and biases.
"""

from __future__ import annotations

import re
from functools import lru_cache

REPEAT_WEIGHT = 1.5
_WORD = re.compile(r"[a-z']+")


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def repeat_share(text: str) -> float:
    """Share of word trigrams that already occurred earlier in the text."""
    words = _WORD.findall(text.lower())
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(trigrams) < 2:
        return 0.0
    return 1.0 - len(set(trigrams)) / len(trigrams)


def gold_score(response: str) -> float:
    if not response.strip():
        return -1.0
    compound = _analyzer().polarity_scores(response)["compound"]
    return max(-1.0, min(1.0, compound - REPEAT_WEIGHT * repeat_share(response)))


def score(prompts: list[str], responses: list[str]) -> list[float]:
    """Gold-judge callable `f(prompts, responses) -> scores` (the prompt is neutral and not scored)."""
    return [gold_score(r) for r in responses]
