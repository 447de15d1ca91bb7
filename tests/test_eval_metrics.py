"""Policy-evaluation metrics: parity of each metric function with a hand-computed or reference value, the default
safety detector on crafted texts, and `rlhfkit eval` end to end on the embedded default model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sacrebleu
from pydantic import ValidationError

from rlhfkit.config import EvalConfig
from rlhfkit.data.records import load_records
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate import policy, safety
from rlhfkit.evaluate.diversity import distinct_n, ead_n, expected_distinct, self_bleu
from rlhfkit.evaluate.pareto import pareto_front
from rlhfkit.models.loading import load_causal_lm, load_reward_model, load_tokenizer
from rlhfkit.resolve import resolve_model_path
from rlhfkit.rollout import sample_responses

TEXTS = ["a b a b", "a b c"]  # bigrams: ab ba ab | ab bc -> 5 in all, 3 unique


# ----------------------------------------------------------------------------------------------- diversity


def test_distinct_n_by_hand():
    assert distinct_n(TEXTS, 2) == pytest.approx(3 / 5)
    assert distinct_n(TEXTS, 1) == pytest.approx(3 / 7)
    assert distinct_n(["a"], 2) == 0.0


def test_ead_n_by_hand():
    # V = 10 for bigrams too (the paper's convention), C = 5: E = 10 * (1 - 0.9^5) = 4.0951
    assert expected_distinct(5, 10) == pytest.approx(4.0951)
    assert ead_n(TEXTS, 2, vocab_size=10) == pytest.approx(3 / 4.0951)
    assert ead_n([[0, 1, 0, 1], [0, 1, 2]], 2, vocab_size=10) == pytest.approx(3 / 4.0951)  # token ids work alike
    assert ead_n(["a b"], 1, vocab_size=2) == pytest.approx(2 / 1.5)  # can exceed 1 when C nears V
    assert ead_n([""], 2, vocab_size=10) == 0.0
    # for C << V the expectation is ~C, and EAD approaches distinct-n
    assert ead_n(TEXTS, 2, vocab_size=10**9) == pytest.approx(distinct_n(TEXTS, 2), rel=1e-6)


def test_ead_is_less_length_biased_than_distinct():
    short = ["the food was good"] * 2
    long = ["the food was good and the staff were kind and the room was clean and quiet"] * 2
    assert distinct_n(long, 1) < distinct_n(short, 1)
    assert ead_n(long, 1, vocab_size=30) / ead_n(short, 1, vocab_size=30) > distinct_n(long, 1) / distinct_n(short, 1)


def test_self_bleu_matches_sacrebleu():
    texts = [
        "the food was great and the staff were kind",
        "the food was awful and the staff were rude",
        "we loved the view from the room",
    ]
    expected = (
        sum(sacrebleu.sentence_bleu(texts[i], [t for j, t in enumerate(texts) if j != i]).score for i in range(3)) / 3
    )
    assert self_bleu(texts) == pytest.approx(expected)
    assert 0 < self_bleu(texts) < 100
    assert self_bleu(["same words here"] * 3) == pytest.approx(100.0)
    assert self_bleu(texts, max_texts=2) == pytest.approx(
        (sacrebleu.sentence_bleu(texts[0], [texts[1]]).score + sacrebleu.sentence_bleu(texts[1], [texts[0]]).score) / 2
    )
    assert self_bleu(texts[:1]) == 0.0


# ----------------------------------------------------------------------------------------------- win rate, KL interval


def test_win_counts_with_ties():
    scores, baseline = [1.0, 0.5, 0.2, 0.3], [0.5, 0.5, 0.25, 0.3]
    assert policy.win_counts(scores, baseline) == {"win_rate": (1 + 0.5 * 2) / 4, "wins": 1, "ties": 2, "losses": 1}
    wider = policy.win_counts(scores, baseline, tie_margin=0.06)  # 0.2 vs 0.25 becomes a tie
    assert (wider["wins"], wider["ties"], wider["losses"]) == (1, 3, 0) and wider["win_rate"] == pytest.approx(2.5 / 4)
    assert policy.win_counts(scores, scores)["win_rate"] == 0.5
    with pytest.raises(ValueError):
        policy.win_counts([1.0], [1.0, 2.0])


def test_mean_ci_by_hand():
    mean, low, high = policy.mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 1.96 * math.sqrt(5 / 3) / math.sqrt(4)  # sample stdev of 1..4 is sqrt(5/3)
    assert (mean, low, high) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    assert policy.mean_ci([0.7]) == (0.7, 0.7, 0.7)
    assert all(math.isnan(v) for v in policy.mean_ci([]))


# ----------------------------------------------------------------------------------------------- safety


def test_default_detector_on_crafted_texts():
    texts = {
        "You are an idiot and I hate you.": True,  # lexicon (VADER -0.79 alone would not flag it)
        "Shut up, moron.": True,  # lexicon, mild VADER
        "I will kill him.": True,
        # VADER only
        "Horrible, awful, terrible, miserable, hateful people. I despise them and their cruel, evil lies.": True,
        "The waiter was pathetic and the soup was cold.": False,  # an ordinary bad review
        "The dessert was to die for, the staff showed real skill.": False,  # no 'kill' inside 'skill'
        "The room was fine.": False,
    }
    assert safety.default_detector([""] * len(texts), list(texts)) == list(texts.values())
    assert safety.abusive_terms("Shut up, MORON, I hate them") == ["shut up", "moron", "hate them"]
    assert safety.unsafe_rate([True, False, False, True]) == 0.5


def test_default_suite_and_detector_load():
    records = load_records(safety.resolve_safety_prompts("default"), "prompt")
    assert 35 <= len(records) <= 45 and len({r.prompt for r in records}) == len(records)
    assert safety.load_detector("default") is safety.default_detector
    with pytest.raises(ConfigError, match="safety_prompts"):
        safety.resolve_safety_prompts("no/such/suite.jsonl")
    with pytest.raises(ConfigError, match="2 flags for 3"):
        safety.call_detector(lambda p, r: [True, False], ["p"] * 3, ["r"] * 3)


def test_eval_config_checks_baseline_and_judge():
    with pytest.raises(ValidationError, match="baseline 'c'"):
        EvalConfig(models={"a": "default"}, baseline="c")
    with pytest.raises(ValidationError, match="judge 'reward_model'"):
        EvalConfig(models={"a": "default"}, judge="reward_model")


# ----------------------------------------------------------------------------------------------- end to end


def test_sampling_matches_sample_responses():
    path = resolve_model_path("default")
    tokenizer, model = load_tokenizer(path, padding_side="left"), load_causal_lm(path)
    prompts = ["I bought this phone last week.", "We stayed at the harbor hotel yesterday."]
    config = EvalConfig(models={"a": "default"}, max_new_tokens=12, seed=3)
    ours = policy.sample_and_kl(model, tokenizer, prompts, config)
    theirs = sample_responses(model, tokenizer, prompts, max_new_tokens=12, seed=3)
    assert ours.responses == theirs.responses and ours.truncated == theirs.truncated and ours.kl is None
    assert [tokenizer.decode(ids, skip_special_tokens=True) for ids in ours.token_ids] == ours.responses


def test_eval_against_itself(tmp_path):
    results = policy.run(
        EvalConfig(
            models={"base": "default", "same": "default"},
            judge="gold",
            output_dir=str(tmp_path),
            num_prompts=8,
            samples_per_prompt=1,
            max_new_tokens=24,
        )
    )
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["baseline"] == "base" and on_disk["judge"] == "gold"
    for name in ("base", "same"):
        row = on_disk["results"][name]
        for key in (
            "win_rate",
            "wins",
            "ties",
            "losses",
            "kl",
            "kl_ci",
            "ead_2",
            "self_bleu",
            "unsafe_rate",
            "distinct_2",
            "mean_gold",
        ):
            assert key in row, (name, key)
        # same seed, same model: identical samples, so every comparison is a tie
        assert row["win_rate"] == 0.5 and row["ties"] == 8
        assert abs(row["kl"]) < 1e-3 and row["kl_ci"][0] <= 0 <= row["kl_ci"][1]
        assert 0 <= row["unsafe_rate"] <= 1 and row["ead_2"] > 0 and 0 <= row["self_bleu"] <= 100
    assert results["same"] == on_disk["results"]["same"]
    table = (tmp_path / "eval.md").read_text()
    for header in ("win rate vs base", "KL (95% CI)", "EAD-2", "self-BLEU", "unsafe"):
        assert header in table, header
    safety_rows = [json.loads(line) for line in (tmp_path / "safety_samples.jsonl").read_text().splitlines()]
    assert len(safety_rows) == 2 * 40
    assert on_disk["results"]["base"]["unsafe_rate"] == pytest.approx(sum(r["unsafe"] for r in safety_rows[:40]) / 40)


def test_eval_reports_every_reward_head(tmp_path):
    path = resolve_model_path("default")
    tokenizer = load_tokenizer(path)
    load_reward_model(path, tokenizer, num_labels=2, new_head=True).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    results = policy.run(
        EvalConfig(
            models={"a": "default"},
            reward_model=str(tmp_path / "rm"),
            gold=None,
            safety_prompts=None,
            output_dir=str(tmp_path / "eval"),
            num_prompts=4,
            max_new_tokens=16,
        )
    )
    row = results["a"]
    assert row["mean_reward"] == pytest.approx(row["reward_head_0"]) and "reward_head_1" in row
    assert row["win_rate"] == 0.5  # judged by the reward model (the default without gold), against itself
    assert "unsafe_rate" not in row and not (tmp_path / "eval" / "safety_samples.jsonl").exists()
    assert "head_1" in (tmp_path / "eval" / "eval.md").read_text()


# ---------------------------------------------------------------- pareto_front


def test_pareto_front_by_hand():
    points = [
        [1.0, 5.0],  # 0: best on the second objective: on the front
        [3.0, 3.0],  # 1: on the front
        [2.0, 2.0],  # 2: dominated by 1 (smaller on both)
        [5.0, 1.0],  # 3: best on the first objective: on the front
        [3.0, 2.0],  # 4: dominated by 1 (equal on the first, smaller on the second)
        [0.0, 0.0],  # 5: dominated by every other row
    ]
    assert pareto_front(points) == [0, 1, 3]


def test_pareto_front_edge_cases():
    # a single point is its own front; so is one objective's maximum (ties on it all kept)
    assert pareto_front([[0.3, -1.0]]) == [0]
    assert pareto_front([[1.0], [3.0], [2.0], [3.0]]) == [1, 3]
    # duplicates do not dominate each other: both kept, and both dominate what is below them
    assert pareto_front([[2.0, 2.0], [2.0, 2.0], [1.0, 2.0]]) == [0, 1]
    # a tie on one objective and better on the other dominates
    assert pareto_front([[1.0, 1.0], [1.0, 2.0]]) == [1]
    # three objectives: each row best somewhere, none dominated
    assert pareto_front([[1, 0, 0], [0, 1, 0], [0, 0, 1]]) == [0, 1, 2]
    assert pareto_front(np.zeros((0, 2))) == []
    with pytest.raises(ValueError, match="objectives"):
        pareto_front([1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        pareto_front([[1.0, float("nan")]])
