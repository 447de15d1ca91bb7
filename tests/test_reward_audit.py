"""Reward-model audit: length-controlled accuracy by hand, integrated gradients (completeness, parity with a plain-torch
Riemann sum, word merging), the new reward-eval keys, and the label-noise sweep (exact, nested flips; a fixed
held-out set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhfkit.config import NoiseSweepConfig, RewardEvalConfig, build_config
from rlhfkit.data.records import PreferencePair, load_records, write_jsonl
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate.attribution import (
    baseline_ids,
    integrated_gradients,
    normalise_word,
    top_words,
    word_attributions,
)
from rlhfkit.evaluate.reward_metrics import length_controlled
from rlhfkit.models.loading import load_reward_model, load_tokenizer, save_model
from rlhfkit.report.plots import png_base64
from rlhfkit.resolve import resolve_model_path
from rlhfkit.scoring import score_sequences
from rlhfkit.stages import noise_sweep, reward

PROMPT = "We had dinner at the little Italian place downtown last week."
RESPONSE = " The food was wonderful, truly unbelievable! The staff were lovely."

SUBJECTS = ["restaurant", "hotel", "phone", "laptop", "cafe", "movie", "book", "gym", "airline", "camera"]
WHEN = ["last week", "yesterday", "a month ago", "over the holidays"]
GOOD = [
    " It was wonderful.",
    " Lovely staff and a great experience, I would go back.",
    " Excellent, truly excellent and fun.",
    " The best one we tried all year, really good value.",
]
BAD = [
    " It was awful.",
    " Rude staff and a terrible experience, never again.",
    " Poor, boring and broken.",
    " The worst one we tried all year, sadly a waste of money.",
]


def synthetic_pairs() -> list[PreferencePair]:
    """40 review pairs with distinct prompts: a positive response chosen over a negative one, gold scores in
    metadata."""
    return [
        PreferencePair(
            prompt=f"We tried the {subject} {when}.",
            chosen=GOOD[(i + j) % 4],
            rejected=BAD[(i + 2 * j) % 4],
            id=f"p{i}-{j}",
            category=subject,
            metadata={"gold_chosen": 0.8, "gold_rejected": -0.6},
        )
        for i, subject in enumerate(SUBJECTS)
        for j, when in enumerate(WHEN)
    ]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(path, synthetic_pairs())
    return path


@pytest.fixture(scope="module")
def random_head_model():
    """The default backbone as a reward model with a seeded random head, so scores and attributions are far from
    zero."""
    path = resolve_model_path("default")
    tokenizer = load_tokenizer(path)
    model = load_reward_model(path, tokenizer, new_head=True)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight, std=0.3)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------- length control


def test_length_controlled_accuracy_hand_computed():
    margins = [1.0, -0.5, 2.0, -1.0, 0.3, 0.0]
    len_chosen = [10, 10, 5, 20, 100, 8]
    len_rejected = [10, 11, 10, 10, 109, 8]
    # Within 10% of the longer: pairs 0 (0 <= 1), 1 (1 <= 1.1), 4 (9 <= 10.9), 5 (equal); correct: 0 and 4 (a zero
    # margin is wrong).
    # Chosen shorter: pairs 1, 2, 4 -> 2 of 3 correct; chosen longer: pair 3 -> 0 of 1.
    got = length_controlled(margins, len_chosen, len_rejected, 0.1)
    assert got == {
        "length_controlled_accuracy": 0.5,
        "length_controlled_pairs": 4,
        "accuracy_chosen_shorter": pytest.approx(2 / 3),
        "chosen_shorter_pairs": 3,
        "accuracy_chosen_longer": 0.0,
        "chosen_longer_pairs": 1,
    }
    exact = length_controlled(margins, len_chosen, len_rejected, 0.0)
    assert (exact["length_controlled_accuracy"], exact["length_controlled_pairs"]) == (0.5, 2)  # pairs 0 and 5
    none = length_controlled([1.0], [5], [5], 0.1)
    assert none["accuracy_chosen_shorter"] is None and none["chosen_shorter_pairs"] == 0


# ----------------------------------------------------------------------------------------------- integrated gradients


def sequence(tokenizer) -> tuple[list[int], int]:
    """prompt + response + EOS (the causal reward-model layout) and where the response starts."""
    prompt_ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    return prompt_ids + response_ids + [tokenizer.eos_token_id], len(prompt_ids)


def riemann_ig(model, input_ids: list[int], base_ids: list[int], steps: int) -> torch.Tensor:
    """Integrated gradients written out in plain torch: midpoint Riemann sum along the embedding path."""
    embeddings = model.get_input_embeddings()
    ids = torch.tensor([input_ids])
    x, x0 = embeddings(ids).detach(), embeddings(torch.tensor([base_ids])).detach()
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    path = (x0 + alphas[:, None, None] * (x - x0)).requires_grad_(True)
    handle = embeddings.register_forward_hook(lambda module, inputs, output: path)
    try:
        batch = ids.expand(steps, -1)
        model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits[:, 0].sum().backward()
    finally:
        handle.remove()
    return ((x - x0)[0] * path.grad.mean(0)).sum(-1)


def test_integrated_gradients_completeness_and_parity(random_head_model):
    model, tokenizer = random_head_model
    ids, start = sequence(tokenizer)
    result = integrated_gradients(model, tokenizer, ids, steps=64)
    assert result.score == pytest.approx(score_sequences(model, [ids], tokenizer.pad_token_id).item(), abs=1e-5)
    difference = result.score - result.baseline_score
    assert abs(difference) > 0.05  # the random head makes the check non-trivial
    assert sum(result.values) == pytest.approx(difference, abs=1e-3 + 1e-3 * abs(difference))
    assert result.values[-1] == 0.0  # EOS is kept in the baseline
    reference = riemann_ig(model, ids, baseline_ids(tokenizer, ids), steps=256)
    assert torch.allclose(torch.tensor(result.values), reference, atol=1e-4)

    # Prompt held fixed: its tokens get exactly zero; the response's attributions still add up.
    response_only = integrated_gradients(model, tokenizer, ids, steps=64, positions=range(start, len(ids)))
    assert all(v == 0.0 for v in response_only.values[:start])
    assert response_only.completeness_error < 1e-3 + 1e-3 * abs(response_only.score - response_only.baseline_score)


def test_word_attributions_merge_bpe_pieces(random_head_model):
    _, tokenizer = random_head_model
    ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    values = [float(i) for i in range(len(ids))]
    words = word_attributions(tokenizer, ids, values)
    assert [w for w, _ in words] == RESPONSE.split()
    assert len(ids) - 1 > len(words)  # some word was more than one token
    assert sum(v for _, v in words) == pytest.approx(sum(values[:-1]))  # EOS dropped, every other token counted once
    assert normalise_word("Wonderful,") == "wonderful" and normalise_word("!") == "!"
    top = top_words([[("Good", 1.0), ("bad", -2.0)], [("good!", 3.0), ("the", 0.0)]], k=1)
    assert top == {"positive": [["good", 2.0, 2]], "negative": [["bad", -2.0, 1]]}


# ----------------------------------------------------------------------------------------------- reward eval


def test_reward_eval_reports_length_control_and_attributions(random_head_model, pairs_file, tmp_path):
    model, tokenizer = random_head_model
    model_dir = save_model(model, tokenizer, tmp_path / "rm")
    summary = reward.evaluate(
        RewardEvalConfig(
            model=str(model_dir),
            data=str(pairs_file),
            output_dir=str(tmp_path / "eval"),
            attributions=3,
            attribution_steps=16,
        )
    )
    for key in (
        "length_controlled_accuracy",
        "length_controlled_pairs",
        "accuracy_chosen_shorter",
        "accuracy_chosen_longer",
        "attributions",
        "top_words",
        "reliability",
        "accuracy_by_category",
        "gold_accuracy",
    ):
        assert key in summary, key
    assert (
        summary["chosen_shorter_pairs"] + summary["chosen_longer_pairs"] + summary["length_controlled_pairs"]
        >= summary["pairs"]
    )
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["top_words"] == summary["top_words"]

    pairs = load_records(pairs_file, "preference")
    assert [row["id"] for row in summary["attributions"]] == [p.id for p in pairs[:3]]
    scores = {row["id"]: row for row in map(json.loads, (tmp_path / "eval" / "scores.jsonl").read_text().splitlines())}
    for row, pair in zip(summary["attributions"], pairs):
        assert [w for w, _ in row["chosen"]] == pair.chosen.split() and [
            w for w, _ in row["rejected"]
        ] == pair.rejected.split()
        assert row["reward_chosen"] == pytest.approx(scores[pair.id]["reward_chosen"], abs=1e-3)
    assert summary["top_words"]["positive"] or summary["top_words"]["negative"]
    assert summary["attribution_method"]["max_completeness_error"] < 0.05


# ----------------------------------------------------------------------------------------------- noise sweep


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.4, 1.0])
def test_flip_labels_is_exact_and_nested(rate):
    pairs = synthetic_pairs()[:37]
    flipped_pairs, flipped = noise_sweep.flip_labels(pairs, rate, seed=3)
    assert len(flipped) == round(rate * len(pairs))
    for i, (before, after) in enumerate(zip(pairs, flipped_pairs)):
        if i in flipped:
            assert (after.chosen, after.rejected) == (before.rejected, before.chosen)
            assert (after.metadata["gold_chosen"], after.metadata["gold_rejected"]) == (
                before.metadata["gold_rejected"],
                before.metadata["gold_chosen"],
            )
        else:
            assert after == before
    _, more = noise_sweep.flip_labels(pairs, min(1.0, rate + 0.2), seed=3)
    assert set(flipped) <= set(more)


def test_noise_sweep_config_checks_train_overrides():
    with pytest.raises(ConfigError, match="train: unknown key 'bogus'"):
        build_config(NoiseSweepConfig, {"data": "x.jsonl", "train": {"bogus": 1}})
    with pytest.raises(ConfigError, match="set by the sweep"):
        build_config(NoiseSweepConfig, {"data": "x.jsonl", "train": {"data": "y.jsonl"}})
    with pytest.raises(ConfigError, match="outside 0..1"):
        build_config(NoiseSweepConfig, {"data": "x.jsonl", "rates": [0.0, 1.5]})


def test_noise_sweep_writes_one_row_per_rate(pairs_file, tmp_path):
    config = NoiseSweepConfig(
        data=str(pairs_file),
        output_dir=str(tmp_path),
        rates=[0.4, 0.0],
        seed=1,
        train={"max_steps": 3, "batch_size": 8, "eval_every": 3, "patience": 0, "lr": 3e-4},
    )
    result = noise_sweep.run(config)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [row["rate"] for row in saved["rows"]] == [0.0, 0.4]
    assert {row["val_pairs"] for row in saved["rows"]} == {result["val_pairs"]} and result[
        "val_pairs"
    ] == 8  # 20% of 40, every rate
    assert result["train_pairs"] + result["val_pairs"] == 40
    for row in saved["rows"]:
        assert row["flipped"] == round(row["rate"] * result["train_pairs"])
        assert 0 <= row["accuracy"] <= 1 and row["gold_accuracy"] is not None

    # The training files differ in exactly the flipped pairs; the held-out file is the clean split.
    clean = load_records(tmp_path / "rate_0.00" / "train_pairs.jsonl", "preference")
    noisy = load_records(tmp_path / "rate_0.40" / "train_pairs.jsonl", "preference")
    assert sum(a.chosen != b.chosen for a, b in zip(clean, noisy)) == round(0.4 * len(clean))
    held_out = load_records(tmp_path / "val_pairs.jsonl", "preference")
    assert not {p.id for p in held_out} & {p.id for p in clean}
    assert png_base64(tmp_path / "sweep.png").startswith("data:image/png;base64,")
    assert "| 40% |" in (tmp_path / "sweep.md").read_text()
