"""The simulated annotator panel, plus the pure metric functions, on hand-made inputs."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from rlhfkit.config import PanelSettings
from rlhfkit.evaluate import reward_metrics as rm
from rlhfkit.evaluate.diversity import distinct_n
from rlhfkit.feedback.panel import SimulatedPanel, Vote, majority, make_annotators

SHORT = "It was fine."
LONG = "It was fine and the room was clean and the staff were polite and the breakfast came on time every single day."


def gold_pairs(n: int, seed: int, min_diff: float) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
        if abs(a - b) >= min_diff:
            out.append((a, b))
    return out


# ----------------------------------------------------------------------------------------------- panel


def test_noiseless_panel_majority_follows_gold():
    panel = SimulatedPanel(PanelSettings(annotators=5, noise=0.0, temperature=0.02, seed=1))
    pairs = gold_pairs(300, seed=0, min_diff=0.4)
    agree = 0
    for ga, gb in pairs:
        winner, share = majority(panel.label(ga, gb, SHORT, SHORT))
        agree += winner == ("a" if ga > gb else "b")
        assert 0.5 < share <= 1
    assert agree / len(pairs) >= 0.98


def test_noise_flips_labels_at_the_drawn_rate():
    settings = PanelSettings(annotators=40, noise=0.3, skill_spread=0.0, temperature=0.02, seed=2)
    panel = SimulatedPanel(settings)
    pairs = gold_pairs(100, seed=3, min_diff=0.4)
    votes = [(v, ga > gb) for ga, gb in pairs for v in panel.label(ga, gb, SHORT, SHORT)]
    agreement = sum(v.choice == ("a" if a_better else "b") for v, a_better in votes) / len(votes)
    # a random label with probability noise_i is wrong half the time
    expected = 1 - statistics.mean(a.noise for a in panel.annotators) / 2
    assert expected < 0.9
    assert agreement == pytest.approx(expected, abs=0.03)


def test_position_bias_favours_first_shown():
    for bias, expect_first in ((1.0, True), (-1.0, False)):
        panel = SimulatedPanel(PanelSettings(annotators=3, noise=0.0, position_bias=bias, seed=4))
        votes = [v for _ in range(400) for v in panel.label(0.3, 0.3, SHORT, SHORT)]
        first_wins = sum(v.choice == v.first for v in votes) / len(votes)
        # sigmoid(1) = 0.73
        assert (first_wins > 0.65) if expect_first else (first_wins < 0.35)
        # both responses are shown first about equally often
        assert 0.4 < sum(v.first == "a" for v in votes) / len(votes) < 0.6


def test_no_bias_equal_gold_is_a_coin_flip():
    panel = SimulatedPanel(PanelSettings(annotators=3, noise=0.0, seed=5))
    votes = [v for _ in range(400) for v in panel.label(0.3, 0.3, SHORT, LONG)]
    assert 0.42 < sum(v.choice == "a" for v in votes) / len(votes) < 0.58
    assert 0.42 < sum(v.choice == v.first for v in votes) / len(votes) < 0.58


def test_length_bias_favours_longer_response():
    panel = SimulatedPanel(PanelSettings(annotators=3, noise=0.0, length_bias=1.0, seed=6))
    words = len(LONG.split()) - len(SHORT.split())
    assert words >= 15  # logit >= 1.5: the longer one wins >= 82% of votes
    votes = [v for _ in range(300) for v in panel.label(0.2, 0.2, SHORT, LONG)]
    assert sum(v.choice == "b" for v in votes) / len(votes) > 0.75
    votes = [v for _ in range(300) for v in panel.label(0.2, 0.2, LONG, SHORT)]
    assert sum(v.choice == "a" for v in votes) / len(votes) > 0.75


def test_same_seed_same_votes_different_seed_differs():
    settings = PanelSettings(annotators=3, noise=0.2, seed=7)
    pairs = gold_pairs(100, seed=8, min_diff=0.0)

    def run(s: PanelSettings) -> list[Vote]:
        panel = SimulatedPanel(s)
        return [v for ga, gb in pairs for v in panel.label(ga, gb, SHORT, LONG)]

    assert run(settings) == run(settings)
    assert run(settings) != run(settings.model_copy(update={"seed": 8}))


def test_make_annotators_deterministic_and_within_bounds():
    settings = PanelSettings(annotators=300, noise=0.2, skill_spread=0.5, seed=9)
    first, second = make_annotators(settings), make_annotators(settings)
    assert first == second
    assert [a.name for a in first] == [f"sim-{i}" for i in range(300)]
    assert all(0.0 <= a.noise <= 0.5 and a.skill > 0 for a in first)
    assert statistics.mean(a.noise for a in first) == pytest.approx(0.2, abs=0.03)
    assert len({round(a.skill, 6) for a in first}) > 250  # per-annotator, not shared
    assert make_annotators(settings.model_copy(update={"seed": 10})) != first

    uniform = make_annotators(PanelSettings(annotators=5, noise=0.0, skill_spread=0.0, seed=11))
    assert all(a.noise == 0.0 and a.skill == 1.0 for a in uniform)

    # the panel's traits are those make_annotators draws for the same settings
    assert SimulatedPanel(settings).annotators == first


def test_majority_and_tie_rule():
    votes = [Vote("x", "a", "b"), Vote("y", "b", "a"), Vote("z", "a", "b")]
    assert majority(votes) == ("b", pytest.approx(2 / 3))
    assert majority([Vote("x", "a", "a"), Vote("y", "a", "b")]) == ("a", 0.5)
    assert majority([Vote("x", "a", "b"), Vote("y", "a", "a")]) == ("b", 0.5)


# -------------------------------------------------------------------------------------- metrics on hand examples


def test_reward_metrics_hand_examples():
    # confidences: m=0 -> 0.5 (wrong: not > 0), ln4 -> 0.8 (right), -ln4 -> 0.8 (wrong), ln9 -> 0.9 (right)
    margins = [0.0, math.log(4), -math.log(4), math.log(9)]
    bins = rm.reliability_bins(margins, bins=2)
    assert [b["count"] for b in bins] == [1, 3]
    assert bins[0]["lo"] == 0.5 and bins[0]["hi"] == 0.75 and bins[1]["hi"] == 1.0
    assert bins[0]["confidence"] == pytest.approx(0.5) and bins[0]["accuracy"] == 0.0
    assert bins[1]["confidence"] == pytest.approx((0.8 + 0.8 + 0.9) / 3) and bins[1]["accuracy"] == pytest.approx(2 / 3)
    # ECE = 1/4 * |0 - 0.5| + 3/4 * |2/3 - 0.8333|
    assert rm.expected_calibration_error(margins, bins=2) == pytest.approx(0.25)
    assert math.isnan(rm.expected_calibration_error([]))
    # perfectly calibrated single bin: confidence 0.8, 4 of 5 right
    assert rm.expected_calibration_error([math.log(4)] * 4 + [-math.log(4)], bins=1) == pytest.approx(0.0, abs=1e-12)
    assert rm.expected_calibration_error([math.log(4)] * 4 + [-math.log(4)], bins=10) == pytest.approx(0.0, abs=1e-12)

    assert rm.preference_accuracy([1.0, -1.0, 0.0, 2.0]) == 0.5
    assert math.isnan(rm.preference_accuracy([]))

    assert rm.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(15 / math.sqrt(228))
    assert rm.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(rm.pearson([1, 1, 1], [1, 2, 3])) and math.isnan(rm.pearson([1], [2]))

    # pairs: longer chosen & preferred (yes), longer chosen & not preferred (no), equal lengths (skip),
    # shorter chosen & preferred (no), zero margin (skip)
    share = rm.longer_preferred_share([1.0, -1.0, 2.0, 0.5, 0.0], [10, 10, 5, 5, 3], [5, 5, 5, 8, 1])
    assert share == pytest.approx(1 / 3)
    assert math.isnan(rm.longer_preferred_share([1.0], [4], [4]))


def test_distinct_n_hand_examples():
    # bigrams: (a b) (b a) (a b) | (a b) (b c): 3 unique of 5, pooled across texts
    assert distinct_n(["a b a b", "a b c"], 2) == pytest.approx(3 / 5)
    assert distinct_n(["a b a b", "a b c"], 1) == pytest.approx(3 / 7)
    assert distinct_n(["x y", "x y"], 2) == pytest.approx(1 / 2)  # pooled, not a per-text mean (which would be 1)
    assert distinct_n(["a", "b"], 2) == 0.0  # no n-gram spans two texts
    assert distinct_n([], 2) == 0.0
    assert distinct_n(["  spaced   out\twords "], 2) == 1.0
