"""A seeded simulated annotator panel that labels pairs from a gold score, with noise and biases.

Annotator i, shown response A first and B second, prefers A with probability

    P(A) = noise_i / 2 + (1 - noise_i) * sigmoid(skill_i * (g_A - g_B) / temperature
                                                  + position_bias + length_bias * (words_A - words_B) / 10)

`noise_i` (a random label), `skill_i` (decisiveness) and the order each pair is shown in are drawn from the
panel's seed, so the same settings label the same pairs the same way.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..config import PanelSettings


@dataclass
class Annotator:
    name: str
    noise: float
    skill: float


@dataclass
class Vote:
    annotator: str
    first: str  # which response was shown first: "a" or "b"
    choice: str  # "a" or "b" (the response preferred, independent of display order)


def make_annotators(settings: PanelSettings) -> list[Annotator]:
    rng = random.Random(settings.seed)
    annotators = []
    for i in range(settings.annotators):
        noise = min(0.5, max(0.0, rng.gauss(settings.noise, settings.noise / 2)))
        skill = math.exp(rng.gauss(0.0, settings.skill_spread))
        annotators.append(Annotator(name=f"sim-{i}", noise=noise, skill=skill))
    return annotators


class SimulatedPanel:
    """`stream` k > 0: the same annotators voting from a separate random stream (one per objective they label), so
    labelling another objective leaves the overall votes (stream 0) as they were."""

    def __init__(self, settings: PanelSettings, stream: int = 0):
        self.settings = settings
        self.annotators = make_annotators(settings)
        self.rng = random.Random(settings.seed + 1 if not stream else f"{settings.seed}:objective:{stream}")

    def vote(self, annotator: Annotator, gold_a: float, gold_b: float, words_a: int, words_b: int) -> Vote:
        s = self.settings
        a_first = self.rng.random() < 0.5
        g_first, g_second = (gold_a, gold_b) if a_first else (gold_b, gold_a)
        w_first, w_second = (words_a, words_b) if a_first else (words_b, words_a)
        logit = (
            annotator.skill * (g_first - g_second) / s.temperature
            + s.position_bias
            + s.length_bias * (w_first - w_second) / 10
        )
        p_first = annotator.noise / 2 + (1 - annotator.noise) * (1 / (1 + math.exp(-max(-50.0, min(50.0, logit)))))
        picked_first = self.rng.random() < p_first
        choice = ("a" if a_first else "b") if picked_first else ("b" if a_first else "a")
        return Vote(annotator=annotator.name, first="a" if a_first else "b", choice=choice)

    def label(self, gold_a: float, gold_b: float, text_a: str, text_b: str) -> list[Vote]:
        """Every annotator's vote on one pair."""
        wa, wb = len(text_a.split()), len(text_b.split())
        return [self.vote(ann, gold_a, gold_b, wa, wb) for ann in self.annotators]


def majority(votes: list[Vote]) -> tuple[str, float]:
    """(winner, share of votes for it); a tie among an even panel goes to the first voter's choice."""
    a = sum(v.choice == "a" for v in votes)
    b = len(votes) - a
    if a == b:
        return votes[0].choice, 0.5
    return ("a", a / len(votes)) if a > b else ("b", b / len(votes))
