"""Best-of-n sweep: the unbiased estimator against brute force over all n-subsets, KL_bon against an exact discrete
computation, the alpha/beta fit on synthetic curves, and a small end-to-end sweep on the default model."""

from __future__ import annotations

import base64
import itertools
import json
import math

import numpy as np
import pytest

from rlhfkit.config import RewardSpec, build_config
from rlhfkit.errors import ConfigError
from rlhfkit.report.plots import png_base64
from rlhfkit.stages import bon_sweep
from rlhfkit.stages.bon_sweep import (
    BonSweepConfig,
    best_of_n_weights,
    describe_fit,
    expected_best_of_n,
    fit_gain,
    kl_bon,
    sweep_ns,
)


def brute_force_best_of_n(proxy: list[float], values: list[float], n: int) -> float:
    """Mean over every n-subset of the value of its best by proxy (ties: the tied best share equally)."""
    totals = []
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        best = [values[i] for i in subset if proxy[i] == top]
        totals.append(sum(best) / len(best))
    return sum(totals) / len(totals)


@pytest.mark.parametrize(
    "proxy", [[0.3, -1.2, 2.5, 0.7, 1.1, -0.4], [0.5, 0.5, 1.0, -1.0, 1.0, 0.5]], ids=["distinct", "ties"]
)
def test_estimator_matches_brute_force_over_all_subsets(proxy):
    values = [1.0, -0.5, 0.25, 2.0, -1.5, 0.75]
    for n in range(1, 7):
        weights = best_of_n_weights(np.array(proxy), n)
        assert weights.sum() == pytest.approx(1.0)
        assert weights @ np.array(values) == pytest.approx(brute_force_best_of_n(proxy, values, n), abs=1e-12)
    assert expected_best_of_n(np.array([proxy]), np.array([values]), 1)[0] == pytest.approx(np.mean(values))


def test_estimator_of_the_proxy_itself_rises_with_n():
    rng = np.random.default_rng(0)
    proxy = rng.normal(size=(5, 16))
    curve = [expected_best_of_n(proxy, proxy, n).mean() for n in range(1, 17)]
    assert all(b > a for a, b in zip(curve, curve[1:]))
    assert curve[-1] == pytest.approx(proxy.max(1).mean())


def discrete_kl_bon(n: int, outcomes: int) -> float:
    """Exact KL(best-of-n || uniform) over `outcomes` equally likely, distinct-reward outcomes (tends to log n -
    (n-1)/n)."""
    ranks = np.arange(1, outcomes + 1, dtype=float) / outcomes
    p_best = ranks**n - (ranks - 1 / outcomes) ** n
    return float((p_best * np.log(np.maximum(p_best, 1e-300) * outcomes)).sum())


def test_kl_bon_formula():
    assert kl_bon(1) == 0.0
    assert kl_bon(2) == pytest.approx(math.log(2) - 0.5)
    for n in (2, 4, 16, 64):
        assert kl_bon(n) == pytest.approx(discrete_kl_bon(n, 200_000), abs=2e-3)
    assert sweep_ns(64) == [1, 2, 4, 8, 16, 32, 64]
    assert sweep_ns(12) == [1, 2, 4, 8, 12] and sweep_ns(8, [8, 3]) == [1, 3, 8]


def test_fit_recovers_alpha_and_beta():
    d = np.sqrt([kl_bon(n) for n in sweep_ns(64)])
    alpha, beta = fit_gain(d, d * (1.3 - 0.4 * d))
    assert (alpha, beta) == (pytest.approx(1.3), pytest.approx(0.4))
    noisy = d * (0.8 - 0.6 * d) + np.random.default_rng(1).normal(scale=0.005, size=len(d))
    alpha, beta = fit_gain(d, noisy)
    assert alpha == pytest.approx(0.8, abs=0.05) and beta == pytest.approx(0.6, abs=0.05)
    fit = describe_fit(alpha, beta, d, noisy)
    assert fit["d_peak"] == pytest.approx(alpha / (2 * beta)) and fit["kl_peak"] == pytest.approx(fit["d_peak"] ** 2)
    assert kl_bon(fit["n_peak"]) == pytest.approx(fit["kl_peak"]) and fit["peak_in_range"] and fit["r2"] > 0.99


def test_fall_from_the_peak_is_judged_paired():
    # 50 prompts whose gold differs a lot from prompt to prompt (+-1) but, on every prompt, is 0.05 lower at n=8
    # than at its peak n=4: each mean's bootstrap std (~0.14) hides the fall, the paired std (~0.003) does not.
    rng = np.random.default_rng(0)
    level = rng.normal(0, 1, size=(50, 1))
    per_prompt = level + np.array([0.0, 0.2, 0.3, 0.25]) + rng.normal(0, 0.02, size=(50, 4))
    resamples = rng.integers(0, 50, size=(200, 50))
    boot = per_prompt[resamples].mean(1)
    best_n, drop, drop_std = bon_sweep.fall_from_peak([1, 2, 4, 8], per_prompt.mean(0), boot)
    assert best_n == 4 and drop == pytest.approx(0.05, abs=0.01)
    assert boot[:, 3].std() > 2 * drop and drop > 5 * drop_std
    assert bon_sweep.fall_from_peak([1, 2], np.array([0.0, 1.0]), None) == (2, 0.0, None)


def test_config_checks_ns_and_bootstrap():
    rewards = [{"function": "default"}]
    with pytest.raises(ConfigError, match="outside 1..max_n=8"):
        build_config(BonSweepConfig, {"rewards": rewards, "max_n": 8, "ns": [1, 2, 16]})
    with pytest.raises(ConfigError, match="at least two values above 1"):
        build_config(BonSweepConfig, {"rewards": rewards, "ns": [1, 4]})
    with pytest.raises(ConfigError, match="bootstrap=1"):
        build_config(BonSweepConfig, {"rewards": rewards, "bootstrap": 1})


def test_sweep_end_to_end_with_proxy_equal_to_gold(tmp_path):
    config = BonSweepConfig(
        rewards=[RewardSpec(function="default")],
        num_prompts=4,
        max_n=8,
        max_new_tokens=16,
        bootstrap=50,
        output_dir=str(tmp_path),
        threads=1,
    )
    result = bon_sweep.run(config)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["samples"] == 32 and [r["n"] for r in saved["rows"]] == [1, 2, 4, 8]
    for row in saved["rows"]:
        assert row["proxy"] == pytest.approx(row["gold"]) and row["proxy_std"] == pytest.approx(row["gold_std"])
        assert row["kl"] == pytest.approx(kl_bon(row["n"]))
    golds = [r["gold"] for r in saved["rows"]]
    assert all(b >= a for a, b in zip(golds, golds[1:])) and golds[-1] > golds[0] and saved["proxy_monotone"]
    assert (
        saved["fits"]["proxy"]["alpha"] == pytest.approx(saved["fits"]["gold"]["alpha"])
        and saved["fits"]["gold"]["alpha"] > 0
    )
    table = (tmp_path / "sweep.md").read_text()
    assert "| 8 |" in table and "alpha =" in table and "beta =" in table
    png = (tmp_path / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and base64.b64decode(png_base64(tmp_path / "sweep.png").split(",", 1)[1]) == png
    assert (
        result["plot"] == str(tmp_path / "sweep.png")
        and len((tmp_path / "samples.jsonl").read_text().splitlines()) == 32
    )


def test_a_second_proxy_scores_the_same_samples(tmp_path):
    first = tmp_path / "gold"
    bon_sweep.run(
        BonSweepConfig(
            rewards=[RewardSpec(function="default")],
            num_prompts=3,
            max_n=4,
            max_new_tokens=12,
            bootstrap=10,
            output_dir=str(first),
            threads=1,
        )
    )
    # a length-biased proxy over the same responses: nothing is sampled again, the proxy is the word count
    second = bon_sweep.run(
        BonSweepConfig(
            rewards=[RewardSpec(function="rlhfkit.scoring:word_count")],
            samples_from=str(first),
            max_n=4,
            bootstrap=10,
            output_dir=str(tmp_path / "length"),
        )
    )
    before = [json.loads(line) for line in (first / "samples.jsonl").read_text().splitlines()]
    after = [json.loads(line) for line in (tmp_path / "length" / "samples.jsonl").read_text().splitlines()]
    assert [r["response"] for r in after] == [r["response"] for r in before]
    assert [r["gold"] for r in after] == [r["gold"] for r in before]
    assert [r["proxy"] for r in after] == [len(r["response"].split()) for r in before]
    assert second["num_prompts"] == 3 and second["samples_from"] == str(first)
    with pytest.raises(ConfigError, match="set max_n=4"):
        bon_sweep.run(BonSweepConfig(rewards=[RewardSpec(function="default")], samples_from=str(first), max_n=8))
    with pytest.raises(ConfigError, match="no finished bon-sweep"):
        bon_sweep.run(BonSweepConfig(rewards=[RewardSpec(function="default")], samples_from=str(tmp_path), max_n=4))
