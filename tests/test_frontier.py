"""The Gao et al. RL form recovers known alpha and beta; `rlhfkit frontier` trains a point per (method, strength),
draws each method's Pareto front, and reuses the policies it already trained."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rlhfkit.config import FrontierConfig, build_config
from rlhfkit.data.records import PreferencePair, load_records, write_jsonl
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.evaluate.overoptimisation import fit_form, fit_gain, rl_fit_from_metrics, rl_form
from rlhfkit.resolve import default_task, resolve_model_path
from rlhfkit.stages import frontier

# ------------------------------------------------------------------------------------------ the RL form


def test_rl_form_fit_recovers_alpha_beta_start_and_peak():
    d = np.linspace(0.05, 4.0, 40)
    alpha, beta, start = 0.9, 0.6, 0.2
    exact = fit_form("rl", d, start + d * (alpha - beta * np.log(d)))
    assert exact["alpha"] == pytest.approx(alpha, abs=1e-9) and exact["beta"] == pytest.approx(beta, abs=1e-9)
    assert exact["start"] == pytest.approx(start, abs=1e-9) and exact["r2"] == pytest.approx(1.0)
    # dR/dd = alpha - beta (log d + 1) = 0 at d* = exp(alpha / beta - 1) = exp(0.5); R(d*) = beta d*
    assert exact["d_peak"] == pytest.approx(math.exp(0.5)) and exact["kl_peak"] == pytest.approx(math.e)
    assert exact["gain_peak"] == pytest.approx(beta * math.exp(0.5)) and exact["peak_in_range"]
    noisy = start + rl_form(d, alpha, beta) + np.random.default_rng(0).normal(0, 0.01, len(d))
    fit = fit_form("rl", d, noisy)
    assert fit["alpha"] == pytest.approx(alpha, abs=0.03) and fit["beta"] == pytest.approx(beta, abs=0.03)


def test_bon_form_without_intercept_matches_fit_gain():
    d = np.linspace(0.1, 2.0, 12)
    gain = d * (1.3 - 0.4 * d) + np.random.default_rng(1).normal(0, 0.02, len(d))
    fit = fit_form("bon", d, gain, intercept=False)
    assert (fit["alpha"], fit["beta"]) == pytest.approx(fit_gain(d, gain), abs=1e-9)
    assert fit["d_peak"] == pytest.approx(fit["alpha"] / (2 * fit["beta"]))


def test_rl_fit_from_a_metrics_file(tmp_path):
    steps = np.arange(1, 61)
    kl = (steps / 10.0) ** 2  # d = step / 10
    gold = 0.1 + rl_form(np.sqrt(kl), 0.5, 0.4)
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": int(s), "kl": float(k), "gold": float(g), "reward": 0.0} for s, k, g in zip(steps, kl, gold)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"step": 0, "loss": 1.0}, *rows]))
    fit = rl_fit_from_metrics(path)
    assert len(fit["points"]) == 60  # the row without kl and gold is left out
    assert fit["rl"]["alpha"] == pytest.approx(0.5) and fit["rl"]["beta"] == pytest.approx(0.4)
    assert fit["rl"]["start"] == pytest.approx(0.1) and fit["rl"]["r2"] > fit["bon"]["r2"]
    path.write_text(json.dumps({"step": 1, "kl": 0.0}) + "\n")
    with pytest.raises(DataError, match="metrics.jsonl: 0 rows log both 'kl' and 'gold'"):
        rl_fit_from_metrics(path)


# ------------------------------------------------------------------------------------------ the front


def test_pareto_front_is_the_upper_envelope():
    points = [
        {"name": n, "kl": kl, "gold": g}
        for n, kl, g in [("a", 0.5, 0.1), ("b", 1.0, 0.4), ("c", 2.0, 0.3), ("d", 3.0, 0.6), ("e", 1.0, 0.2)]
    ]
    assert [p["name"] for p in frontier.pareto_front(points)] == ["a", "b", "d"]


def test_config_names_what_a_method_needs():
    with pytest.raises(ConfigError, match="methods has dpo, which needs data"):
        build_config(FrontierConfig, {"rewards": [{"function": "default"}]})
    with pytest.raises(ConfigError, match="ppo: kl_coef is set by the frontier"):
        build_config(FrontierConfig, {"methods": ["ppo"], "rewards": [{"function": "default"}], "ppo": {"kl_coef": 1}})
    with pytest.raises(ConfigError, match="strengths.grpo is missing"):
        build_config(FrontierConfig, {"methods": ["grpo"], "rewards": [{"function": "x:y"}], "strengths": {}})


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def preference_file(tmp_path_factory):
    """64 pairs from the default task: a prompt's own review (chosen) against the next prompt's (rejected)."""
    examples = load_records(default_task().sft_data, "sft")[:65]
    path = tmp_path_factory.mktemp("prefs") / "pairs.jsonl"
    write_jsonl(
        path,
        [
            PreferencePair(prompt=a.prompt, chosen=a.response, rejected=b.response, id=i)
            for i, (a, b) in enumerate(zip(examples, examples[1:]))
        ],
    )
    return path


def tiny(out, data, seed: int = 0) -> FrontierConfig:
    return build_config(
        FrontierConfig,
        {
            "output_dir": str(out),
            "data": str(data),
            "rewards": [{"function": "default"}],
            "methods": ["dpo", "ppo"],
            "strengths": {"dpo": [0.01, 3.0], "ppo": [0.0, 1.0]},
            "dpo": {"max_steps": 12, "batch_size": 8, "lr": 3e-4, "val_fraction": 0.0, "eval_every": 100},
            "ppo": {"steps": 5, "batch_size": 8, "mini_batch_size": 8, "max_new_tokens": 24, "lr": 1e-4},
            "eval": {"num_prompts": 8, "samples_per_prompt": 2, "max_new_tokens": 24, "safety_prompts": None},
            "seed": seed,
            "threads": 1,
        },
    )


@pytest.fixture(scope="module")
def tiny_frontier(tmp_path_factory, preference_file):
    out = tmp_path_factory.mktemp("frontier")
    return out, frontier.run(tiny(out, preference_file))


def test_frontier_writes_a_point_per_method_and_strength_and_its_fronts(tiny_frontier):
    out, result = tiny_frontier
    for name in ("frontier.json", "frontier.md", "frontier.png", "rl_fit.png", "pipeline.yaml", "eval/eval.json"):
        assert (out / name).is_file(), name
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "frontier.json").read_text())
    assert saved["points"] == result["points"]
    trained = {(p["method"], p["strength"]) for p in result["points"] if p["method"] != "reference"}
    assert trained == {("dpo", 0.01), ("dpo", 3.0), ("ppo", 0.0), ("ppo", 1.0)}
    assert [p["kl"] for p in result["points"] if p["method"] == "reference"] == [pytest.approx(0.0, abs=1e-5)]
    for method, names in result["fronts"].items():
        mine = [p for p in result["points"] if p["method"] == method]
        front = [next(p for p in mine if p["name"] == n) for n in names]
        # the front climbs with KL, and every point off it is beaten by a front point on both axes
        assert all(a["kl"] <= b["kl"] and a["gold"] < b["gold"] for a, b in zip(front, front[1:]))
        for p in mine:
            assert p["on_front"] == (p["name"] in names)
            assert p["on_front"] or any(f["kl"] <= p["kl"] and f["gold"] >= p["gold"] for f in front)
    table = (out / "frontier.md").read_text()
    assert table.count("| dpo | beta ") == 2 and table.count("| ppo | kl_coef ") == 2
    assert "R(d) = d (alpha - beta log d)" in table


def test_every_policy_moved_from_the_reference(tiny_frontier):
    # Not asserted: KL at DPO beta 0.01 above KL at beta 3. On these 12-step runs it held on 3 of seeds 0-4 (and on
    # 4 of 5 at lr 1e-3, 2 of 5 at 40 steps): Adam's steps have one size whatever beta until the loss saturates. Nor
    # a sampled KL above a bound: at beta 3 it is within its noise of 0 (-0.21 on one build of the default, +0.3 on
    # another), so the test compares the saved weights with the reference's.
    from safetensors.torch import load_file

    out, result = tiny_frontier
    reference = load_file(next(resolve_model_path("default").glob("*.safetensors")))
    for point in result["points"]:
        if point["method"] == "reference":
            continue
        trained = load_file(out / point["name"] / "model" / "model.safetensors")
        change = max((trained[k] - reference[k]).abs().max().item() for k in reference)
        assert change > 1e-4, (point["name"], change)


def test_a_second_run_reuses_every_policy(tiny_frontier, preference_file):
    out, first = tiny_frontier
    again = frontier.run(tiny(out, preference_file))
    assert {p["trained"] for p in again["points"] if p["method"] != "reference"} == {"skipped"}
    assert [p["gold"] for p in again["points"]] == [p["gold"] for p in first["points"]]


def test_the_report_shows_the_frontier_and_the_rl_fit(tiny_frontier, tmp_path):
    from rlhfkit.report.html import build_report

    out, _ = tiny_frontier
    page = build_report(out, tmp_path / "report.html").read_text()
    assert '<section id="frontier"><h2>Reward/KL frontier</h2>' in page
    assert page.index('id="overoptimisation"') < page.index('id="frontier"') < page.index('id="detectors"')
    assert "gold against KL to the reference per method" in page and "RL form d(alpha - beta log d)" in page
    (tmp_path / "empty").mkdir()
    assert 'id="frontier"' not in build_report(tmp_path / "empty").read_text()  # absent: no placeholder
