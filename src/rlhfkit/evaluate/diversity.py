"""Diversity of a set of responses."""

from __future__ import annotations


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Unique whitespace n-grams divided by all n-grams, pooled across the texts (0 when there are none)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
