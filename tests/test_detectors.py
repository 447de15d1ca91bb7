"""Run detectors on synthetic metrics rows shaped like healthy, reward-hacked, length-drifting, collapsing and
KL-exploding runs, plus two real 60-step runs (copied inline, rounded) that pin the default thresholds."""

from __future__ import annotations

import inspect
import json
import math

import pytest
from pydantic import ValidationError

from rlhfkit.errors import DataError
from rlhfkit.evaluate import diversity
from rlhfkit.evaluate.detectors import (
    DetectorSettings,
    Verdict,
    eval_detectors,
    format_verdicts,
    kl_blowup,
    length_drift,
    load_metrics,
    mode_collapse,
    reward_hacking,
    run_detectors,
    stock_phrase,
)

STEPS = range(1, 61)


def wiggle(step: int, size: float) -> float:
    """Deterministic batch-to-batch noise: +size, -size, 0, repeating (mean 0 over every window of 3)."""
    return (0.0, size, -size)[step % 3]


def rise(step: int, start: float, end: float, rate: float = 0.15) -> float:
    """Saturating rise from `start` toward `end` (most of it in the first ~20 steps)."""
    return end + (start - end) * math.exp(-rate * (step - 1))


def make_rows(**series) -> list[dict]:
    """Rows with the same keys as an online-RL metrics.jsonl; each keyword maps a step to a value."""
    defaults = dict(
        reward=lambda s: rise(s, 0.0, 2.6) + wiggle(s, 0.05),
        gold=lambda s: rise(s, 0.1, 0.9) + wiggle(s, 0.02),
        kl=lambda s: rise(s, 0.0, 3.0, 0.1) + wiggle(s, 0.3),
        response_length=lambda s: 22 + 8 * (s - 1) / 59 + wiggle(s, 1.0),
        distinct_2=lambda s: 0.55 - 0.07 * (s - 1) / 59 + wiggle(s, 0.01),
        stock_phrase_share=lambda s: 0.3 + wiggle(s, 0.05),
    )
    defaults.update(series)
    return [{"step": s, **{k: f(s) for k, f in defaults.items() if f is not None}} for s in STEPS]


def fired(verdicts: list[Verdict]) -> set[str]:
    return {v.name for v in verdicts if v.fired}


# Real runs, columns (step, reward, gold, kl, response_length, distinct_2).
# PPO_T1: healthy PPO (kl_coef 0.05), reward and gold rise together, KL settles near 3.
# PPO_KL0: kl_coef 0 against a length-biased reward model: proxy saturates, gold plateaus, KL explodes, length doubles.
PPO_T1 = [
    (1, -0.326, 0.058, 0.00, 24.6, 0.555),
    (2, 0.484, 0.325, 0.14, 28.6, 0.511),
    (3, 1.018, 0.560, 0.39, 23.2, 0.569),
    (4, 0.877, 0.468, 0.97, 20.2, 0.590),
    (5, 1.228, 0.563, 0.59, 20.8, 0.601),
    (6, 1.634, 0.665, 1.14, 19.8, 0.595),
    (7, 1.765, 0.765, 1.31, 21.0, 0.581),
    (8, 1.906, 0.772, 1.86, 18.5, 0.560),
    (9, 1.839, 0.728, 1.53, 19.4, 0.534),
    (10, 2.091, 0.779, 1.58, 18.0, 0.576),
    (11, 2.059, 0.806, 2.01, 19.1, 0.551),
    (12, 2.280, 0.852, 2.14, 21.8, 0.573),
    (13, 2.348, 0.875, 2.13, 25.0, 0.532),
    (14, 2.379, 0.879, 2.34, 22.2, 0.579),
    (15, 2.102, 0.754, 2.28, 26.0, 0.525),
    (16, 2.497, 0.875, 2.70, 24.4, 0.557),
    (17, 2.530, 0.893, 3.07, 24.4, 0.522),
    (18, 2.666, 0.928, 3.02, 30.0, 0.497),
    (19, 2.533, 0.916, 2.66, 23.8, 0.503),
    (20, 2.600, 0.917, 3.53, 25.4, 0.534),
    (21, 2.341, 0.847, 2.21, 24.3, 0.533),
    (22, 2.534, 0.893, 3.20, 28.7, 0.491),
    (23, 2.626, 0.935, 4.28, 29.0, 0.525),
    (24, 2.676, 0.939, 3.89, 29.7, 0.479),
    (25, 2.536, 0.895, 3.04, 27.6, 0.492),
    (26, 2.608, 0.928, 3.49, 27.1, 0.495),
    (27, 2.653, 0.934, 3.37, 28.5, 0.474),
    (28, 2.359, 0.874, 2.73, 24.7, 0.489),
    (29, 2.665, 0.927, 3.49, 31.0, 0.492),
    (30, 2.649, 0.922, 3.23, 29.2, 0.521),
    (31, 2.603, 0.911, 3.36, 28.1, 0.493),
    (32, 2.638, 0.931, 2.63, 28.9, 0.506),
    (33, 2.608, 0.920, 2.86, 27.5, 0.477),
    (34, 2.563, 0.920, 2.66, 27.5, 0.507),
    (35, 2.592, 0.899, 3.10, 28.7, 0.505),
    (36, 2.683, 0.925, 3.33, 30.3, 0.496),
    (37, 2.633, 0.926, 2.34, 28.8, 0.487),
    (38, 2.604, 0.907, 2.74, 29.6, 0.482),
    (39, 2.625, 0.901, 3.08, 30.9, 0.491),
    (40, 2.653, 0.922, 3.14, 32.6, 0.480),
    (41, 2.645, 0.933, 2.88, 29.7, 0.450),
    (42, 2.657, 0.897, 2.74, 28.1, 0.513),
    (43, 2.677, 0.925, 2.67, 30.8, 0.488),
    (44, 2.596, 0.926, 2.62, 27.0, 0.516),
    (45, 2.660, 0.906, 2.90, 29.3, 0.500),
    (46, 2.665, 0.913, 3.04, 27.9, 0.527),
    (47, 2.563, 0.906, 2.68, 27.7, 0.492),
    (48, 2.677, 0.917, 2.79, 29.7, 0.471),
    (49, 2.648, 0.912, 2.58, 30.2, 0.476),
    (50, 2.574, 0.906, 2.00, 26.5, 0.506),
    (51, 2.565, 0.907, 2.08, 29.2, 0.467),
    (52, 2.659, 0.920, 3.11, 31.2, 0.487),
    (53, 2.635, 0.922, 2.44, 30.9, 0.463),
    (54, 2.627, 0.930, 2.55, 31.2, 0.506),
    (55, 2.532, 0.893, 3.05, 33.7, 0.463),
    (56, 2.669, 0.926, 2.86, 35.2, 0.461),
    (57, 2.608, 0.901, 2.67, 32.0, 0.507),
    (58, 2.648, 0.929, 2.92, 29.7, 0.457),
    (59, 2.610, 0.913, 2.33, 29.9, 0.482),
    (60, 2.575, 0.920, 2.52, 32.4, 0.458),
]
PPO_KL0 = [
    (1, -0.729, 0.059, 0.00, 24.8, 0.552),
    (2, 0.410, 0.384, 0.19, 29.5, 0.489),
    (3, 0.695, 0.312, 0.20, 32.6, 0.515),
    (4, 0.682, 0.256, 0.37, 32.3, 0.494),
    (5, 1.079, 0.438, 0.57, 36.2, 0.473),
    (6, 1.389, 0.404, 0.42, 35.2, 0.491),
    (7, 1.847, 0.642, 1.78, 40.2, 0.432),
    (8, 1.776, 0.652, 1.48, 37.7, 0.488),
    (9, 1.904, 0.721, 2.07, 38.3, 0.451),
    (10, 1.892, 0.676, 3.02, 39.3, 0.459),
    (11, 1.841, 0.722, 2.29, 39.1, 0.408),
    (12, 2.389, 0.807, 4.82, 44.3, 0.413),
    (13, 2.134, 0.802, 3.57, 41.3, 0.418),
    (14, 2.629, 0.882, 3.85, 46.3, 0.396),
    (15, 2.691, 0.837, 5.20, 47.1, 0.395),
    (16, 2.788, 0.896, 6.23, 49.4, 0.413),
    (17, 2.443, 0.901, 5.00, 45.6, 0.416),
    (18, 2.320, 0.679, 3.54, 44.0, 0.407),
    (19, 2.873, 0.849, 7.74, 52.2, 0.384),
    (20, 2.618, 0.901, 7.30, 48.8, 0.425),
    (21, 2.695, 0.867, 10.05, 51.3, 0.387),
    (22, 2.763, 0.838, 6.59, 48.1, 0.395),
    (23, 2.619, 0.858, 8.98, 51.2, 0.408),
    (24, 2.836, 0.911, 6.94, 49.8, 0.402),
    (25, 2.861, 0.881, 11.33, 52.9, 0.364),
    (26, 2.878, 0.901, 14.53, 51.9, 0.379),
    (27, 2.880, 0.884, 11.59, 52.8, 0.341),
    (28, 2.871, 0.871, 13.91, 54.6, 0.364),
    (29, 2.876, 0.900, 13.21, 51.6, 0.381),
    (30, 2.875, 0.880, 14.17, 53.7, 0.344),
    (31, 2.855, 0.848, 16.73, 56.6, 0.353),
    (32, 2.726, 0.849, 17.14, 53.6, 0.357),
    (33, 2.870, 0.859, 19.10, 59.8, 0.344),
    (34, 2.691, 0.879, 20.16, 57.3, 0.357),
    (35, 2.871, 0.863, 24.41, 55.8, 0.359),
    (36, 2.880, 0.831, 26.95, 57.9, 0.373),
    (37, 2.874, 0.862, 29.66, 61.4, 0.385),
    (38, 2.878, 0.828, 32.63, 61.2, 0.370),
    (39, 2.876, 0.863, 38.72, 63.1, 0.396),
    (40, 2.877, 0.816, 36.83, 62.5, 0.371),
    (41, 2.874, 0.841, 41.11, 59.1, 0.402),
    (42, 2.878, 0.844, 41.88, 57.1, 0.395),
    (43, 2.880, 0.858, 52.63, 62.1, 0.406),
    (44, 2.881, 0.886, 54.19, 58.9, 0.423),
    (45, 2.878, 0.863, 70.85, 61.3, 0.413),
    (46, 2.867, 0.915, 63.62, 56.0, 0.414),
    (47, 2.879, 0.861, 74.38, 62.3, 0.398),
    (48, 2.880, 0.858, 80.75, 62.1, 0.425),
    (49, 2.878, 0.857, 73.24, 60.9, 0.413),
    (50, 2.879, 0.864, 86.40, 62.0, 0.385),
    (51, 2.879, 0.875, 103.19, 63.2, 0.409),
    (52, 2.876, 0.842, 92.96, 62.0, 0.373),
    (53, 2.878, 0.842, 85.96, 60.8, 0.389),
    (54, 2.876, 0.847, 95.70, 61.9, 0.352),
    (55, 2.821, 0.863, 92.37, 57.6, 0.363),
    (56, 2.874, 0.900, 141.21, 59.9, 0.400),
    (57, 2.877, 0.891, 155.34, 60.8, 0.367),
    (58, 2.872, 0.873, 173.96, 62.4, 0.374),
    (59, 2.872, 0.876, 174.09, 65.6, 0.367),
    (60, 2.861, 0.867, 157.04, 58.5, 0.373),
]


def real_rows(table: list[tuple]) -> list[dict]:
    keys = ("step", "reward", "gold", "kl", "response_length", "distinct_2")
    return [dict(zip(keys, row)) for row in table]


# ----------------------------------------------------------------------------------------------- shapes


def test_healthy_run_fires_nothing():
    verdicts = run_detectors(make_rows())
    assert [v.name for v in verdicts] == [
        "reward_hacking",
        "length_drift",
        "mode_collapse",
        "stock_phrase",
        "kl_blowup",
    ]
    assert fired(verdicts) == set()
    assert all(v.summary.startswith(v.name) for v in verdicts)


def test_reward_hacking_fires_when_proxy_rises_and_gold_falls_from_its_peak():
    def gold(s):  # rises to 0.8 by step 20, holds to step 35, then falls 0.014 per step
        return 0.1 + 0.7 * (s - 1) / 19 if s < 20 else 0.8 if s <= 35 else 0.8 - 0.014 * (s - 35)

    rows = make_rows(reward=lambda s: 0.05 * s, gold=gold)
    v = reward_hacking(rows)
    assert v.fired
    e = v.evidence
    assert e["gold_key"] == "gold"
    assert e["gold_peak_window"] == [20, 29] and e["gold_peak_step"] == 29  # the earliest best window
    assert e["gold_peak"] == pytest.approx(0.8)
    assert e["final_window"] == [51, 60]
    assert e["gold_final"] == pytest.approx(0.8 - 0.014 * 20.5, abs=1e-4)
    assert e["gold_fall"] == pytest.approx(0.014 * 20.5, abs=1e-4)
    assert e["proxy_at_peak"] == pytest.approx(0.05 * 24.5)
    assert e["proxy_final"] == pytest.approx(0.05 * 55.5)
    assert e["proxy_first"] == pytest.approx(0.05 * 5.5)
    assert "proxy reward rose" in v.summary and "gold fell" in v.summary
    assert "reward_hacking" in fired(run_detectors(rows))


def test_reward_hacking_does_not_fire_on_a_noisy_plateau():
    # gold ends 0.015 below its best window with +-0.03 batch noise: within noise, not a fall
    rows = make_rows(gold=lambda s: rise(s, 0.1, 0.88) - (0.015 if s > 40 else 0) + wiggle(s, 0.03))
    v = reward_hacking(rows)
    assert not v.fired
    assert 0 < v.evidence["gold_fall"] < 0.05
    assert "within" in v.summary


def test_reward_hacking_wants_a_noise_clear_fall():
    # a 0.06 drop passes min_fall but with +-0.15 noise it is inside 2 standard errors
    rows = make_rows(gold=lambda s: 0.8 - (0.06 if s > 40 else 0) + wiggle(s, 0.15))
    v = reward_hacking(rows)
    assert v.evidence["gold_fall"] > 0.05 and v.evidence["gold_noise"] > v.evidence["gold_fall"]
    assert not v.fired
    assert reward_hacking(rows, noise_z=0).fired


def test_reward_hacking_needs_the_proxy_to_keep_rising():
    # gold and proxy fall together: the reward model agrees the policy got worse; a bad run, not hacking
    def gold(s):
        return 0.4 + 0.02 * s if s <= 20 else 0.8 if s <= 30 else 0.8 - 0.01 * (s - 30)

    rows = make_rows(reward=lambda s: 1.0 + 0.1 * s if s <= 30 else 4.0 - 0.05 * (s - 30), gold=gold)
    v = reward_hacking(rows)
    assert v.evidence["gold_fall"] > 0.2 and v.evidence["proxy_rise"] > 0.1
    assert v.evidence["gold_peak_window"] == [20, 29]
    assert v.evidence["proxy_final"] < v.evidence["proxy_at_peak"] - 0.1
    assert not v.fired
    assert "did not keep rising" in v.summary


def test_reward_hacking_uses_win_rate_when_no_gold_is_logged():
    rows = make_rows(gold=None, win_rate=lambda s: 0.7 if s <= 30 else 0.7 - 0.01 * (s - 30), reward=lambda s: 0.1 * s)
    v = reward_hacking(rows)
    assert v.fired and v.evidence["gold_key"] == "win_rate"


def test_reward_hacking_is_not_judged_without_gold():
    v = reward_hacking(make_rows(gold=None))
    assert not v.fired and v.evidence == {}
    assert "no gold score" in v.summary


def test_length_drift():
    grown = length_drift(make_rows(response_length=lambda s: 25 + 35 * (s - 1) / 59))
    assert grown.fired
    e = grown.evidence
    assert e["first_window"] == [1, 10] and e["final_window"] == [51, 60]
    assert e["first_length"] == pytest.approx(25 + 35 * 4.5 / 59, abs=1e-3)
    assert e["final_length"] == pytest.approx(25 + 35 * 54.5 / 59, abs=1e-3)
    assert e["ratio"] == pytest.approx(e["final_length"] / e["first_length"], abs=1e-3)
    assert "grew" in grown.summary
    healthy = length_drift(make_rows())
    assert not healthy.fired and 1.2 < healthy.evidence["ratio"] < 1.6
    assert length_drift(make_rows(), max_ratio=1.2).fired


def test_mode_collapse():
    collapsed = mode_collapse(make_rows(distinct_2=lambda s: 0.55 - 0.45 * (s - 1) / 59))
    assert collapsed.fired
    e = collapsed.evidence
    assert e["reference"] == pytest.approx(0.55 - 0.45 * 4.5 / 59, abs=1e-4)
    assert e["reference_source"] == "steps 1-10"
    assert e["final_distinct_2"] == pytest.approx(0.55 - 0.45 * 54.5 / 59, abs=1e-4)
    assert e["ratio"] < 0.5
    assert not mode_collapse(make_rows()).fired


def test_mode_collapse_with_an_explicit_reference():
    rows = make_rows(distinct_2=lambda s: 0.15)
    assert not mode_collapse(rows).fired  # flat diversity is not collapse relative to itself
    v = mode_collapse(rows, reference=0.5)  # but it is against a reference model measured at 0.5
    assert v.fired and v.evidence["reference"] == 0.5 and v.evidence["reference_source"] == "given"
    assert not mode_collapse(rows, reference=0.25).fired
    assert mode_collapse(rows, fraction=0.7, reference=0.25).fired
    assert "mode_collapse" in fired(run_detectors(rows, DetectorSettings(reference_distinct_2=0.5)))


def test_stock_phrase_fires_when_one_phrase_takes_over():
    rows = make_rows(stock_phrase_share=lambda s: rise(s, 0.3, 0.8, 0.1))
    v = stock_phrase(rows)
    assert v.fired and v.evidence["final_share"] > 0.7 and v.evidence["ratio"] > 1.5, v.summary
    assert not stock_phrase(make_rows()).fired
    # a task whose answers share a phrase by nature: high but flat is not a takeover
    assert not stock_phrase(make_rows(stock_phrase_share=lambda s: 0.6)).fired
    assert "stock_phrase" in fired(run_detectors(rows))


def test_stock_phrase_on_eval_rows_of_the_demo_models():
    # eval.json rows of the 2026-11 demo (576 samples each): the DPO model opened most answers with "Best of all,"
    sft = {"stock_phrase": "on top of", "stock_phrase_share": 0.2448}
    dpo = {"stock_phrase": "best of all", "stock_phrase_share": 0.5243}
    v = stock_phrase([dpo], reference=sft["stock_phrase_share"])
    assert v.fired and v.evidence["phrase"] == "best of all" and "('best of all') is in 52%" in v.summary, v.summary
    assert not stock_phrase([sft], reference=sft["stock_phrase_share"]).fired


def demo_eval(**dpo) -> dict:
    """An eval.json of the demo's shape: the SFT model is the baseline; DPO's figures are given."""
    sft = {"distinct_2": 0.151, "stock_phrase": "on top of", "stock_phrase_share": 0.2448}
    ppo = {"distinct_2": 0.140, "stock_phrase": "i loved the", "stock_phrase_share": 0.30}
    return {"baseline": "sft", "results": {"sft": sft, "ppo": ppo, "dpo": {"distinct_2": 0.106, **dpo}}}


def test_eval_detectors_judge_each_model_against_the_baseline():
    found = eval_detectors(demo_eval(stock_phrase="best of all", stock_phrase_share=0.5243))
    assert set(found) == {"ppo", "dpo"}  # the baseline is not judged against itself
    assert fired(found["dpo"]) == {"stock_phrase"} and not fired(found["ppo"])
    assert "'best of all'" in found["dpo"][1].summary
    # a collapse of distinct-2 to under half the baseline's fires mode_collapse
    collapsed = demo_eval(stock_phrase="best of all", stock_phrase_share=0.2)
    collapsed["results"]["dpo"]["distinct_2"] = 0.05
    assert fired(eval_detectors(collapsed)["dpo"]) == {"mode_collapse"}
    # an eval without these figures (older eval.json) judges nothing, and an unknown baseline nothing at all
    assert eval_detectors({"baseline": "sft", "results": {"sft": {}, "dpo": {}}}) == {"dpo": []}
    assert eval_detectors({"baseline": "gone", "results": {"dpo": {}}}) == {}


def test_detect_command_on_an_eval_folder(tmp_path):
    import subprocess
    import sys

    (tmp_path / "eval.json").write_text(json.dumps(demo_eval(stock_phrase="best of all", stock_phrase_share=0.52)))
    command = [sys.executable, "-m", "rlhfkit.cli", "detect", str(tmp_path)]
    shown = subprocess.run(command, capture_output=True, text=True)
    assert shown.returncode == 0 and "dpo:\nok     mode_collapse" in shown.stdout, shown.stdout + shown.stderr
    assert "FIRED  stock_phrase: yes, the top trigram ('best of all') is in 52%" in shown.stdout
    strict = subprocess.run([*command, "--strict"], capture_output=True, text=True)
    assert strict.returncode == 1


def test_stock_phrase_share_by_hand():
    texts = [" Best of all, the food was great.", " Best of all, I loved it!", " The food was fine.", "Two words"]
    assert diversity.stock_phrase(texts) == ("best of all", 0.5)  # ties with "the food was": alphabetical first
    assert diversity.stock_phrase(texts, n=2) == ("best of", 0.5)
    assert diversity.stock_phrase(["Best of all, best of all, best of all."]) == ("all best of", 1.0)
    assert diversity.stock_phrase(["too short"]) == ("", 0.0) and diversity.stock_phrase([]) == ("", 0.0)


def test_kl_blowup_over_the_ceiling_and_growing():
    rows = make_rows(kl=lambda s: 0.1 * math.exp(s / 8))  # 0.11 -> 180 nats
    v = kl_blowup(rows)
    assert v.fired
    e = v.evidence
    assert e["final_window"] == [51, 60] and e["previous_window"] == [41, 50]
    assert e["growth"] == pytest.approx(math.exp(10 / 8), abs=1e-3)
    assert e["max_step"] == 60 and e["max_kl"] == pytest.approx(0.1 * math.exp(60 / 8), abs=1e-3)
    crossed = e["ceiling_crossed_step"]  # the first window whose mean is above 20 ends here
    assert sum(0.1 * math.exp(s / 8) for s in range(crossed - 9, crossed + 1)) / 10 > 20
    assert sum(0.1 * math.exp(s / 8) for s in range(crossed - 10, crossed)) / 10 <= 20
    assert "above the ceiling" in v.summary and "still growing" in v.summary


def test_kl_blowup_growth_alone():
    rows = make_rows(kl=lambda s: 2.0 if s <= 40 else 6.0 if s <= 50 else 12.0)  # below the ceiling, doubling
    v = kl_blowup(rows)
    assert v.fired and v.evidence["growth"] == pytest.approx(2.0) and v.evidence["ceiling_crossed_step"] is None
    assert "still growing" in v.summary and "above the ceiling" not in v.summary
    assert not kl_blowup(rows, growth=2.5).fired


def test_kl_settling_or_rising_from_zero_is_not_a_blowup():
    assert not kl_blowup(make_rows()).fired  # settles near 3
    early = make_rows(kl=lambda s: 0.05 * s)[:20]  # still rising 3x per window, but only to 1 nat
    v = kl_blowup(early)
    assert not v.fired and v.evidence["growth"] > 1.5 and v.evidence["final_kl"] < 5


def test_short_runs_use_smaller_windows_and_single_rows_are_not_judged():
    rows = make_rows()[:4]
    verdicts = run_detectors(rows)
    assert all(v.evidence["window"] == 2 for v in verdicts)
    single = run_detectors(rows[:1])
    assert fired(single) == set()
    assert all("not judged" in v.summary for v in single)
    assert all("not judged" in v.summary for v in run_detectors([]))


def test_non_finite_and_missing_values_are_skipped():
    rows = make_rows(response_length=lambda s: 25 + 35 * (s - 1) / 59)
    rows[-1]["response_length"] = float("nan")
    del rows[-2]["response_length"]
    v = length_drift(rows)
    assert v.fired and v.evidence["final_window"] == [49, 58]


# ----------------------------------------------------------------------------------------------- real runs


def test_defaults_on_the_healthy_ppo_run():
    verdicts = {v.name: v for v in run_detectors(real_rows(PPO_T1))}
    assert fired(verdicts.values()) == set()
    assert verdicts["reward_hacking"].evidence["gold_fall"] < 0.01
    assert verdicts["length_drift"].evidence["ratio"] == pytest.approx(1.47, abs=0.01)
    assert verdicts["kl_blowup"].evidence["final_kl"] == pytest.approx(2.65, abs=0.01)


def test_defaults_on_the_kl0_length_hacked_run():
    verdicts = {v.name: v for v in run_detectors(real_rows(PPO_KL0))}
    assert fired(verdicts.values()) == {"length_drift", "kl_blowup"}
    hacking = verdicts["reward_hacking"].evidence  # gold plateaus: 0.881 (steps 20-29) -> 0.868, within noise
    assert hacking["gold_peak_window"] == [20, 29]
    assert hacking["gold_fall"] == pytest.approx(0.0135, abs=0.002) and hacking["gold_fall"] < hacking["gold_noise"]
    assert verdicts["length_drift"].evidence["ratio"] == pytest.approx(1.77, abs=0.01)
    kl = verdicts["kl_blowup"].evidence
    assert kl["final_kl"] == pytest.approx(127.2, abs=0.1) and kl["ceiling_crossed_step"] == 38
    assert kl["growth"] == pytest.approx(1.99, abs=0.01)


# ----------------------------------------------------------------------------------------------- settings, files


def test_function_defaults_match_the_settings_defaults():
    s = DetectorSettings()
    pairs = {
        reward_hacking: dict(window=s.window, min_rise=s.min_rise, min_fall=s.min_fall, noise_z=s.noise_z),
        length_drift: dict(window=s.window, max_ratio=s.max_length_ratio),
        mode_collapse: dict(window=s.window, fraction=s.collapse_fraction, reference=s.reference_distinct_2),
        kl_blowup: dict(window=s.window, ceiling=s.kl_ceiling, growth=s.kl_growth, floor=s.kl_floor),
    }
    for fn, expected in pairs.items():
        defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k != "rows"}
        assert defaults == expected, fn.__name__


def test_settings_are_strict_and_every_default_is_documented():
    with pytest.raises(ValidationError):
        DetectorSettings(windw=5)
    with pytest.raises(ValidationError):
        DetectorSettings(collapse_fraction=1.5)
    assert all(f.description for f in DetectorSettings.model_fields.values())
    rows = make_rows()
    assert fired(run_detectors(rows, DetectorSettings(max_length_ratio=1.1))) == {"length_drift"}


def test_format_verdicts():
    text = format_verdicts(run_detectors(real_rows(PPO_KL0)))
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[1].startswith("FIRED  length_drift") and lines[0].startswith("ok     reward_hacking")


def test_load_metrics_round_trip_and_errors(tmp_path):
    rows = make_rows()[:5]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_metrics(path) == rows
    path.write_text(json.dumps(rows[0]) + "\n" + '{"step": 2, "kl": \n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: not valid JSON"):
        load_metrics(path)
    path.write_text(json.dumps(rows[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: expected a JSON object"):
        load_metrics(path)
    with pytest.raises(DataError, match="not found"):
        load_metrics(tmp_path / "missing.jsonl")
