"""Pareto fronts of several objectives (rewards of several heads, gold and KL, ...). Pure numpy."""

from __future__ import annotations

import numpy as np


def pareto_front(points) -> list[int]:
    """Indices, ascending, of the non-dominated rows of an [n, objectives] array, every objective maximised.

    Row i is dominated when another row is >= on every objective and > on at least one; two equal rows do not
    dominate each other, so duplicates on the front are both kept."""
    points = np.asarray(points, dtype=float)
    if points.ndim != 2:
        raise ValueError(f"points must be [n, objectives], got shape {points.shape}")
    if np.isnan(points).any():
        raise ValueError("points contain NaN: a NaN objective cannot be compared")
    # at_least[j, i]: row j >= row i everywhere; better[j, i]: row j > row i somewhere
    at_least = (points[:, None, :] >= points[None, :, :]).all(axis=-1)
    better = (points[:, None, :] > points[None, :, :]).any(axis=-1)
    dominated = (at_least & better).any(axis=0)
    return [int(i) for i in np.flatnonzero(~dominated)]
