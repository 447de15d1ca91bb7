"""Reward models on a causal-LM backbone transformers has no sequence-classification class for (Granite, in
transformers 5.24): rlhfkit puts its own scalar head on the base model (`models.loading.sequence_classification_class`).
It trains, saves, reloads (through rlhfkit, and without it as docs/reward-models.md shows), and every consumer of reward
models scores with it: reward eval, the scorer behind online rewards and the judge, GRPO, best-of-n and policy eval.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import BoNConfig, EvalConfig, GRPOConfig, RewardEvalConfig, RewardSpec, RewardTrainConfig
from rlhfkit.data.records import load_records
from rlhfkit.evaluate.policy import run as eval_run
from rlhfkit.models.loading import load_reward_model, load_tokenizer
from rlhfkit.models.tiny import HIDDEN, build_tiny
from rlhfkit.scoring import RewardEncoder, RewardModelScorer, encode_pairs, margins_of
from rlhfkit.stages import bon, grpo, reward

TOPICS = ["the pasta", "the hotel room", "the bike shop", "the new phone", "the museum", "the bakery", "the dentist"]
TOPICS += ["the film", "the train ride", "the coffee", "the bookshop", "the gym", "the concert", "the pizza"]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def granite(tmp_path_factory):
    """A tiny Granite causal LM, a pair set, prompts and the reward model trained on the pairs."""
    root = tmp_path_factory.mktemp("granite")
    base = build_tiny("granite", root / "base")
    pairs = write_jsonl(
        root / "pairs.jsonl",
        [
            {
                "prompt": f"Write a short review of {t}.",
                "chosen": f" {t.capitalize()} was {good}.",
                "rejected": f" {t.capitalize()} was {bad}.",
            }
            for t in TOPICS
            for good, bad in (("lovely", "awful"), ("great", "bad"))
        ],
    )
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": f"Write a short review of {t}."} for t in TOPICS[:4]])
    summary = reward.train(
        RewardTrainConfig(
            model=str(base),
            data=str(pairs),
            output_dir=str(root / "rm"),
            max_steps=20,
            batch_size=8,
            lr=3e-3,
            eval_every=5,
            patience=0,
            seed=0,
        )
    )
    return {
        "root": root,
        "base": base,
        "pairs": pairs,
        "prompts": prompts,
        "summary": summary,
        "rm": root / "rm" / "model",
    }


def val_margins(model_dir: Path, pairs_path: Path, new_head: bool = False) -> list[float]:
    tokenizer = load_tokenizer(model_dir)
    torch.manual_seed(0)
    model = load_reward_model(model_dir, tokenizer, new_head=new_head)
    encoded, _ = encode_pairs(load_records(pairs_path, "preference"), RewardEncoder(tokenizer, 64, 32))
    return margins_of(model, encoded, tokenizer.pad_token_id, 16)[0]


def test_a_granite_reward_model_trains_and_its_accuracy_rises(granite):
    val = granite["root"] / "rm" / "val_pairs.jsonl"
    before = val_margins(granite["base"], val, new_head=True)  # the fresh near-zero head: no preference yet
    after = val_margins(granite["rm"], val)
    assert max(abs(m) for m in before) < 0.05
    assert granite["summary"]["best_val_accuracy"] == 1.0
    assert all(m > 0.1 for m in after), after  # every held-out pair ranked right, by a clear margin


def test_the_saved_head_is_the_base_model_plus_score_weights(granite):
    config = json.loads((granite["rm"] / "config.json").read_text())
    assert config["architectures"] == ["GraniteForSequenceClassification"]
    weights = load_file(str(granite["rm"] / "model.safetensors"))
    assert weights["score.weight"].shape == (1, HIDDEN)  # one output per objective (num_labels), no bias
    assert {k.split(".")[0] for k in weights} == {"model", "score"}


def test_it_reloads_without_rlhfkit_as_documented(granite):
    """The two recipes of docs/reward-models.md give the scores rlhfkit gives."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.modeling_layers import GenericForSequenceClassification
    from transformers.models.granite.modeling_granite import GranitePreTrainedModel

    texts = ["Write a short review of the pasta. The pasta was lovely.", "Write a short review of the gym. It was bad."]
    scorer = RewardModelScorer(granite["rm"])
    expected = torch.tensor(
        scorer.score(
            ["Write a short review of the pasta.", "Write a short review of the gym."],
            [" The pasta was lovely.", " It was bad."],
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(str(granite["rm"]))
    batch = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]

    # 1: transformers' own generic head on Granite's base model
    class GraniteForSequenceClassification(GenericForSequenceClassification, GranitePreTrainedModel):
        pass

    model = GraniteForSequenceClassification.from_pretrained(str(granite["rm"])).eval()
    # 2: plain PyTorch: the base model, and the head applied to the last token's hidden state
    base = AutoModel.from_pretrained(str(granite["rm"])).eval()
    head = load_file(str(granite["rm"] / "model.safetensors"))["score.weight"]
    with torch.no_grad():
        generic = torch.cat([model(input_ids=torch.tensor([ids])).logits[:, 0] for ids in batch])
        by_hand = torch.stack([base(input_ids=torch.tensor([ids])).last_hidden_state[0, -1] @ head[0] for ids in batch])
    assert torch.allclose(generic, expected, atol=1e-4) and torch.allclose(by_hand, expected, atol=1e-4)


def test_every_reward_model_consumer_scores_with_it(granite, tmp_path):
    rm, prompts = str(granite["rm"]), str(granite["prompts"])
    scores = RewardModelScorer(rm).score(
        ["Write a short review of the pasta."] * 2, [" It was lovely.", " It was awful."]
    )
    assert scores[0] > scores[1]
    evaluated = reward.evaluate(RewardEvalConfig(model=rm, data=str(granite["pairs"]), output_dir=str(tmp_path / "ev")))
    assert evaluated["accuracy"] == 1.0
    online = dict(prompts=prompts, rewards=[RewardSpec(model=rm)], gold=None, max_new_tokens=6, max_prompt_length=32)
    ran = grpo.run(
        GRPOConfig(
            model=str(granite["base"]),
            output_dir=str(tmp_path / "grpo"),
            batch_size=2,
            group_size=2,
            mini_batch_size=2,
            steps=1,
            seed=0,
            **online,
        )
    )
    # the reward the policy was trained on is the reward model's (reward_rm0), a finite score
    assert (tmp_path / "grpo" / "model" / "config.json").is_file() and math.isfinite(ran["final"]["reward_rm0"])
    best = bon.run(
        BoNConfig(
            model=str(granite["base"]),
            prompts=prompts,
            rewards=[RewardSpec(model=rm)],
            gold=None,
            n=2,
            max_new_tokens=6,
            output_dir=str(tmp_path / "bon"),
        )
    )
    assert best["reward_best"] > best["reward_mean"]  # the reward model told the samples apart and kept the best
    result = eval_run(
        EvalConfig(
            models={"granite": str(granite["base"])},
            prompts=prompts,
            reward_model=rm,
            gold=None,
            max_new_tokens=6,
            output_dir=str(tmp_path / "eval"),
        )
    )
    assert math.isfinite(result["granite"]["mean_reward"])
