"""Reward-model metrics over preference margins m = r(chosen) - r(rejected). Pure functions of lists."""

from __future__ import annotations

import math


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def preference_accuracy(margins: list[float]) -> float:
    """Share of pairs where the chosen response scores strictly higher."""
    return sum(m > 0 for m in margins) / len(margins) if margins else float("nan")


def reliability_bins(margins: list[float], bins: int = 10) -> list[dict]:
    """Equal-width bins over the confidence max(p, 1-p) in [0.5, 1], p = sigmoid(margin); accuracy per bin."""
    rows = [
        {"lo": 0.5 + 0.5 * b / bins, "hi": 0.5 + 0.5 * (b + 1) / bins, "count": 0, "confidence": 0.0, "accuracy": 0.0}
        for b in range(bins)
    ]
    for m in margins:
        p = sigmoid(m)
        conf = max(p, 1 - p)
        b = min(bins - 1, int((conf - 0.5) / 0.5 * bins))
        rows[b]["count"] += 1
        rows[b]["confidence"] += conf
        rows[b]["accuracy"] += 1.0 if m > 0 else 0.0
    for row in rows:
        if row["count"]:
            row["confidence"] /= row["count"]
            row["accuracy"] /= row["count"]
    return rows


def expected_calibration_error(margins: list[float], bins: int = 10) -> float:
    """ECE = sum over bins of (bin share) * |accuracy - mean confidence|."""
    if not margins:
        return float("nan")
    return sum(
        r["count"] / len(margins) * abs(r["accuracy"] - r["confidence"])
        for r in reliability_bins(margins, bins)
        if r["count"]
    )


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def longer_preferred_share(margins: list[float], len_chosen: list[int], len_rejected: list[int]) -> float:
    """Among pairs of unequal length, the share where the model scores the longer response higher."""
    picks = [(m > 0) == (lc > lr) for m, lc, lr in zip(margins, len_chosen, len_rejected) if lc != lr and m != 0]
    return sum(picks) / len(picks) if picks else float("nan")


def length_controlled(margins: list[float], len_chosen: list[int], len_rejected: list[int], tolerance: float) -> dict:
    """Accuracy where length cannot explain the label: pairs whose word counts differ by at most `tolerance` of the
    longer one; and accuracy split by whether the chosen response is the shorter or the longer one (None: no pairs)."""

    def accuracy(selected: list[float]) -> float | None:
        return preference_accuracy(selected) if selected else None

    close = [m for m, c, r in zip(margins, len_chosen, len_rejected) if abs(c - r) <= tolerance * max(c, r)]
    shorter = [m for m, c, r in zip(margins, len_chosen, len_rejected) if c < r]
    longer = [m for m, c, r in zip(margins, len_chosen, len_rejected) if c > r]
    return {
        "length_controlled_accuracy": accuracy(close),
        "length_controlled_pairs": len(close),
        "accuracy_chosen_shorter": accuracy(shorter),
        "chosen_shorter_pairs": len(shorter),
        "accuracy_chosen_longer": accuracy(longer),
        "chosen_longer_pairs": len(longer),
    }


def ensemble_disagreement(member_rewards: list[list[float]]) -> float:
    """How much an ensemble's members disagree: the std across members of each response's reward (population std,
    as in uwo's variance), averaged over responses (NaN rewards skipped)."""
    columns = [column for column in zip(*member_rewards) if not any(math.isnan(x) for x in column)]
    if len(member_rewards) < 2 or not columns:
        return float("nan")
    stds = []
    for column in columns:
        mean = sum(column) / len(column)
        stds.append(math.sqrt(sum((x - mean) ** 2 for x in column) / len(column)))
    return sum(stds) / len(stds)
