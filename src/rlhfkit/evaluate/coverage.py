"""Prompt-set coverage by sentence embeddings: how much of a reference distribution of prompts has a close
neighbour in a prompt set, which reference regions have none, and which candidate prompts would close the gap.
Pure numpy over embedding rows (rlhfkit.evaluate.shift.embed makes them)."""

from __future__ import annotations

import numpy as np


def _unit_rows(rows, name: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"{name} must be [n, dim], got shape {rows.shape}")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} has an all-zero row: its cosine similarity is undefined")
    return rows / norms


def nearest_similarity(prompt_embeddings, reference_embeddings) -> np.ndarray:
    """For each reference row, its highest cosine similarity to any prompt row, shape [m] (-inf with no prompts)."""
    prompts = _unit_rows(prompt_embeddings, "prompt_embeddings")
    reference = _unit_rows(reference_embeddings, "reference_embeddings")
    if prompts.shape[1] != reference.shape[1]:
        raise ValueError(f"embedding sizes differ: prompts {prompts.shape[1]}, reference {reference.shape[1]}")
    if len(prompts) == 0:
        return np.full(len(reference), -np.inf)
    return (reference @ prompts.T).max(axis=1)


def prompt_coverage(prompt_embeddings, reference_embeddings, threshold: float) -> float:
    """Share of reference rows whose highest cosine similarity to any prompt row is >= threshold."""
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold!r}")
    nearest = nearest_similarity(prompt_embeddings, reference_embeddings)
    if len(nearest) == 0:
        raise ValueError("reference_embeddings is empty: coverage of nothing is undefined")
    return float((nearest >= threshold).mean())


def greedy_cover(
    candidate_embeddings, reference_embeddings, covered, threshold: float, target: float, limit: int | None = None
) -> tuple[list[int], list[float]]:
    """Pick candidates one at a time, each the one that covers most still-uncovered reference rows (ties: the lower
    index), until the covered share reaches `target`, `limit` picks are made or no candidate covers anything new.
    `covered` marks the reference rows covered already. Returns the picked indices and the coverage after each."""
    candidates = _unit_rows(candidate_embeddings, "candidate_embeddings")
    reference = _unit_rows(reference_embeddings, "reference_embeddings")
    covered = np.asarray(covered, dtype=bool).copy()
    if covered.shape != (len(reference),):
        raise ValueError(f"covered must have one flag per reference row ({len(reference)}), got {covered.shape}")
    # reaches[c, r]: candidate c would cover reference row r
    reaches = (candidates @ reference.T) >= threshold if len(candidates) else np.zeros((0, len(reference)), bool)
    picked, after = [], []
    while covered.mean() < target and (limit is None or len(picked) < limit) and len(candidates):
        gains = (reaches & ~covered).sum(axis=1)
        best = int(np.argmax(gains))
        if gains[best] == 0:
            break
        picked.append(best)
        covered |= reaches[best]
        after.append(float(covered.mean()))
    return picked, after


def kmeans(rows, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Spherical k-means labels of unit rows (cosine similarity), k-means++ seeding; k is capped at the row count."""
    rows = _unit_rows(rows, "rows")
    k = min(k, len(rows))
    if k < 1:
        return np.zeros(0, dtype=int)
    rng = np.random.default_rng(seed)
    centres = [rows[rng.integers(len(rows))]]
    for _ in range(1, k):
        # k-means++: the next centre is drawn in proportion to the squared distance to the nearest centre so far
        distance = np.clip(1 - (rows @ np.array(centres).T).max(axis=1), 0, None) ** 2
        if distance.sum() == 0:
            break
        centres.append(rows[rng.choice(len(rows), p=distance / distance.sum())])
    centres = np.array(centres)
    labels = np.full(len(rows), -1)
    for _ in range(iterations):
        new = (rows @ centres.T).argmax(axis=1)
        if (new == labels).all():
            break
        labels = new
        for c in range(len(centres)):
            members = rows[labels == c]
            if len(members):
                mean = members.sum(axis=0)
                centres[c] = mean / max(np.linalg.norm(mean), 1e-12)
    return labels
