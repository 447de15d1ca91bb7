"""The training and evaluation stages end to end on the embedded default, kept small enough for a 2-core CPU.

One SFT run, one pairs file and one reward model are made once per module (fixtures below) and reused by the
reward, DPO and evaluation tests. Every test checks what a user would see: files written, numbers that move the
right way, models that reload in plain `transformers`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_DEMO
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhfkit.config import (
    DPOConfig,
    EvalConfig,
    LoraSettings,
    PairsConfig,
    RewardEvalConfig,
    RewardTrainConfig,
    SFTConfig,
)
from rlhfkit.data.records import load_records
from rlhfkit.data.tokenize import Encoder
from rlhfkit.demo import corpus
from rlhfkit.demo.build import ensure_default
from rlhfkit.demo.gold import gold_score
from rlhfkit.errors import DataError
from rlhfkit.evaluate import policy
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.resolve import resolve_model_path
from rlhfkit.rollout import sample_responses
from rlhfkit.stages import demo, dpo, pairs, reward, sft
from rlhfkit.train import OFFLINE_ZERO_GRADIENT, Alarms, check_gradient

DEFAULT = resolve_model_path("default")

RESTAURANT = "We had dinner at the little Italian place downtown last week."
POSITIVE = " The food was wonderful and the staff were lovely. I would definitely recommend it."
NEGATIVE = " The food was awful and the staff were rude. Never again."


# ----------------------------------------------------------------------------------------------- helpers


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def config_yaml(run_dir: Path) -> dict:
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def summary_json(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def weights_differ(model_a, model_b) -> bool:
    a, b = model_a.state_dict(), model_b.state_dict()
    assert a.keys() == b.keys()
    return any(not torch.equal(a[k], b[k]) for k in a)


def write_jsonl(path: Path, objs) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def causal_generates(model_dir: Path) -> str:
    """Reload with plain transformers and greedily continue a review opening; returns the new text."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    ids = tokenizer(RESTAURANT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids["input_ids"].shape[1] :]
    assert len(new) > 0
    return tokenizer.decode(new, skip_special_tokens=True)


def plain_reward(model_dir: Path, prompt: str, response: str) -> float:
    """Score prompt + response + EOS with a reward model reloaded in plain transformers."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    ids = (
        tokenizer(prompt, add_special_tokens=False)["input_ids"]
        + tokenizer(response, add_special_tokens=False)["input_ids"]
    )
    ids = ids + [tokenizer.eos_token_id]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


# ----------------------------------------------------------------------------------------------- shared runs

SFT_LR = 1.5e-4


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    summary = sft.run(
        SFTConfig(
            output_dir=str(out),
            max_steps=30,
            lr=SFT_LR,
            batch_size=16,
            val_fraction=0.02,
            log_every=5,
            eval_every=15,
            seed=0,
        )
    )
    return summary, out


@pytest.fixture(scope="module")
def pairs_run(sft_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    summary = pairs.run(PairsConfig(model=str(sft_run[1] / "model"), output_dir=str(out), num_prompts=160, seed=0))
    return summary, out / "pairs.jsonl"


@pytest.fixture(scope="module")
def reward_run(pairs_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward")
    summary = reward.train(
        RewardTrainConfig(
            data=str(pairs_run[1]),
            output_dir=str(out),
            max_steps=30,
            eval_every=5,
            log_every=5,
            batch_size=8,
            lr=3e-4,
            val_fraction=0.3,
            patience=0,
            seed=0,
        )
    )
    return summary, out


@pytest.fixture(scope="module")
def small_pairs(pairs_run, tmp_path_factory) -> Path:
    """The first 16 fixture pairs, for the short DPO runs."""
    path = tmp_path_factory.mktemp("small") / "pairs.jsonl"
    lines = pairs_run[1].read_text().splitlines()[:16]
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- SFT


def test_sft_on_default_data_logs_saves_and_reloads(sft_run):
    summary, out = sft_run
    assert summary["steps"] == 30
    # The default model is pre-trained on the same reviews, so 30 steps move the validation loss only within noise:
    # it must be measured before and after, stay finite and not blow up.
    before, after = summary["val_loss_before"], summary["val_loss"]
    assert math.isfinite(before) and math.isfinite(after) and 0 < after < before + 0.05
    n_examples = len(load_records(ensure_default().sft_data, "sft"))
    assert (
        summary["val_examples"] == int(n_examples * 0.02)
        and summary["train_examples"] == n_examples - summary["val_examples"]
    )

    metrics = rows(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [5, 10, 15, 20, 25, 30]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in metrics)
    assert {r["step"] for r in metrics if "val_loss" in r} == {15, 30}
    assert metrics[-1]["val_loss"] == pytest.approx(after, abs=1e-5)

    config = config_yaml(out)
    assert config["lr"] == pytest.approx(SFT_LR) and config["max_steps"] == 30 and config["batch_size"] == 16
    assert config["lora"] is None and config["output_dir"] == str(out)

    # model/ is a plain HF directory holding the trained (not the base) weights, and it generates.
    assert weights_differ(AutoModelForCausalLM.from_pretrained(str(out / "model")), load_causal_lm(DEFAULT))
    assert causal_generates(out / "model").strip()


def test_sft_teaches_eos_on_short_responses(tmp_path):
    sentences = [" It was fine.", " I liked it.", " Not for me."]
    openings = [opening for _, opening in corpus.all_openings()][::7][:48]
    data = write_jsonl(
        tmp_path / "short.jsonl", ({"prompt": o, "response": sentences[i % 3]} for i, o in enumerate(openings))
    )
    summary = sft.run(
        SFTConfig(
            data=str(data),
            output_dir=str(tmp_path / "run"),
            max_steps=40,
            lr=1e-3,
            batch_size=8,
            val_fraction=0.25,
            eval_every=100,
            seed=0,
        )
    )
    # A new, easy task: the validation loss on the held-out short responses falls a lot.
    assert summary["val_loss"] < 0.5 * summary["val_loss_before"]

    prompts = openings[:24]

    def sample(model_dir):
        tokenizer = load_tokenizer(model_dir, padding_side="left")
        return sample_responses(load_causal_lm(model_dir), tokenizer, prompts, max_new_tokens=16, seed=0)

    base = sample(DEFAULT)
    assert base.truncated_share > 0.5  # the base model writes whole reviews: 16 tokens are not enough to finish
    tuned = sample(tmp_path / "run" / "model")
    assert tuned.truncated_share <= 0.2
    assert sum(bool(r.strip()) for r in tuned.responses) >= 0.9 * len(prompts)
    assert sum(len(r.split()) <= 5 for r in tuned.responses) >= 0.8 * len(prompts)


def test_sft_lora_merged_and_adapter_only(tmp_path):
    common = dict(max_steps=5, lr=1e-3, batch_size=8, val_fraction=0.01, eval_every=100, seed=0)
    merged = sft.run(SFTConfig(output_dir=str(tmp_path / "merged"), lora=LoraSettings(r=4), **common))
    model_dir = Path(merged["model_dir"])
    assert not (model_dir / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(str(model_dir))
    base = load_causal_lm(DEFAULT)
    assert type(reloaded) is type(base)
    assert weights_differ(reloaded, base)
    assert causal_generates(model_dir).strip()
    assert config_yaml(tmp_path / "merged")["lora"]["r"] == 4

    sft.run(SFTConfig(output_dir=str(tmp_path / "adapter"), lora=LoraSettings(r=4, merge=False), **common))
    adapter_dir = tmp_path / "adapter" / "model"
    assert (adapter_dir / "adapter_config.json").is_file()
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 4
    assert any(p.name.startswith("adapter_model") for p in adapter_dir.iterdir())


def test_truncation_rule_counts_exactly():
    tokenizer = load_tokenizer(DEFAULT)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    eos = tokenizer.eos_token_id
    max_length, max_prompt = 24, 10
    short_prompt = "I bought this phone."
    long_prompt = (
        "We stayed at the harbor hotel last week and the view from the balcony over the water was the "
        "best part of it all."
    )
    short_resp = " It was fine."
    long_resp = (
        " The room was great. The bed was lovely. The staff were excellent and the breakfast was "
        "wonderful. I will come back again!"
    )
    # Preconditions that make the expected counts below certain.
    assert len(ids(short_prompt)) + len(ids(short_resp)) + 1 <= max_length
    assert len(ids(long_prompt)) > max_prompt and max_prompt + len(ids(short_resp)) + 1 <= max_length
    assert len(ids(short_prompt)) + len(ids(long_resp)) > max_length

    enc = Encoder(tokenizer, max_length, max_prompt, add_eos=True)
    # 1: fits as is
    p, (r,) = enc.encode(short_prompt, [short_resp])
    assert p == ids(short_prompt) and r == ids(short_resp) + [eos]
    # 2: prompt cut from the left: its END is kept; the response still ends in EOS
    p, (r,) = enc.encode(long_prompt, [short_resp])
    assert p == ids(long_prompt)[-max_prompt:]
    assert tokenizer.decode(p).endswith("best part of it all.")
    assert r == ids(short_resp) + [eos]
    # 3: response cut from the right to the budget, without EOS
    p, (r,) = enc.encode(short_prompt, [long_resp])
    assert r == ids(long_resp)[: max_length - len(p)] and eos not in r and len(p) + len(r) == max_length
    assert tokenizer.decode(r).startswith(" The room was great.")
    # 4: both cut
    p, (r,) = enc.encode(long_prompt, [long_resp])
    assert len(p) == max_prompt and len(p) + len(r) == max_length and eos not in r
    # 5: a pair with one long response: counted once; the short response keeps its EOS
    p, (r_short, r_long) = enc.encode(short_prompt, [short_resp, long_resp])
    assert r_short[-1] == eos and eos not in r_long

    report = enc.report.as_dict()
    assert {k: report[k] for k in ("records", "prompts_truncated", "responses_truncated", "dropped")} == {
        "records": 5, "prompts_truncated": 2, "responses_truncated": 3, "dropped": 0
    }  # fmt: skip
    # three short responses kept whole; the long one cut to the budget after a short prompt (twice), a cut one (once)
    short_n, long_n = len(ids(short_resp)) + 1, len(ids(long_resp)) + 1
    kept = 3 * short_n + 2 * (max_length - len(ids(short_prompt))) + (max_length - max_prompt)
    assert (enc.report.response_tokens, enc.report.response_tokens_kept) == (3 * short_n + 3 * long_n, kept)
    assert report["response_tokens_cut_share"] == pytest.approx(1 - kept / (3 * short_n + 3 * long_n), abs=1e-4)
    assert "2 of 5 prompts cut from the left, 3 responses cut from the right" in enc.report.summary(
        max_length, max_prompt
    )

    # No room: a prompt that keeps max_prompt_length tokens and leaves no budget is dropped and counted;
    # a pair whose responses are identical once cut is dropped too.
    tight = Encoder(tokenizer, max_length=12, max_prompt_length=128)
    assert tight.encode(long_prompt, [long_resp], "line 1 (id 'a')") is None
    assert (
        tight.encode(
            short_prompt,
            [" The room was great and the staff were lovely.", " The room was great and the staff were rude."],
            "line 2",
        )
        is None
    )
    p, (r,) = tight.encode(short_prompt, [short_resp], "line 3")
    assert p == ids(short_prompt) and len(p) + len(r) <= 12
    assert tight.report.dropped == 2 and tight.report.records == 3
    assert "2 records dropped (line 1 (id 'a'), line 2)" in tight.report.summary(12, 128)
    with pytest.raises(
        DataError, match=r"data.jsonl: 2 of 3 records dropped by truncation \(line 1 \(id 'a'\), line 2\), 1 left"
    ):
        tight.report.check("data.jsonl", 12, 128)
    # a response with no token at all (no EOS to add) is dropped too: a kept record always has a token to train on
    bare = Encoder(tokenizer, max_length=64, max_prompt_length=32, add_eos=False)
    assert bare.encode(short_prompt, [""], "line 9") is None and bare.report.dropped_at == ["line 9"]
    with pytest.raises(DataError, match="1 of 1 records dropped by truncation \\(line 9\\), nothing left to train on"):
        bare.report.check("data.jsonl", 64, 32)
    # past NAMED records the message counts the rest
    for i in range(4, 12):
        tight.encode(long_prompt, [long_resp], f"line {i}")
    assert tight.report.named() == "line 1 (id 'a'), line 2, line 4, line 5, line 6 and 5 more"


def test_offline_stages_warn_on_a_zero_or_corrupt_gradient(capsys):
    alarms = Alarms()
    for step, norm in ((1, 0.5), (2, None), (3, 0.0), (4, 0.0), (5, float("inf")), (6, float("nan"))):
        check_gradient(alarms, step, norm)  # None: unknown (DeepSpeed), never a warning
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING")]
    assert lines == [
        f"WARNING at step 3: the gradient norm is 0, so the update changed nothing; {OFFLINE_ZERO_GRADIENT}",
        "WARNING at step 5: the gradient norm is inf (before clipping), so the update is corrupt; lower lr, use bf16 "
        "rather than fp16, or look for inf/NaN in the rewards or the data",
    ]  # steps 4 and 6 come within 10 steps of a warning of their kind


# ----------------------------------------------------------------------------------------------- pairs


def test_pairs_records_judgments_and_determinism(tmp_path):
    config = dict(model="default", num_prompts=40, seed=3)
    first = pairs.run(PairsConfig(output_dir=str(tmp_path / "a"), **config))
    second = pairs.run(PairsConfig(output_dir=str(tmp_path / "b"), **config))

    records = load_records(tmp_path / "a" / "pairs.jsonl", "preference")
    assert len(records) == first["pairs"] and len(records) + sum(first["skipped"].values()) == 40
    assert len(records) >= 30
    annotators = PairsConfig().panel.annotators
    for rec in records:
        meta = rec.metadata
        assert {"gold_chosen", "gold_rejected", "votes", "agreement"} <= set(meta)
        assert len(meta["votes"]) == annotators and set(meta["votes"].values()) <= {"a", "b"}
        winner_share = max(Counter(meta["votes"].values()).values()) / annotators
        assert meta["agreement"] == pytest.approx(winner_share, abs=1e-3)
        assert rec.chosen.strip() != rec.rejected.strip()
        assert meta["gold_chosen"] == pytest.approx(gold_score(rec.chosen, rec.prompt), abs=1e-4)
        assert meta["gold_rejected"] == pytest.approx(gold_score(rec.rejected, rec.prompt), abs=1e-4)

    judgments = rows(tmp_path / "a" / "judgments.jsonl")
    assert len(judgments) == annotators * len(records)
    by_pair = {rec.id: rec.metadata["votes"] for rec in records}
    for j in judgments:
        assert by_pair[j["pair_id"]][j["annotator"]] == j["choice"]
        assert j["shown_first"] in ("a", "b")

    # votes are in sampling order; chosen_side names the sample that became chosen (the majority's pick)
    for pair_id in by_pair:
        votes = [j for j in judgments if j["pair_id"] == pair_id]
        assert {j["chosen_side"] for j in votes} == {Counter(j["choice"] for j in votes).most_common(1)[0][0]}

    # the panel's votes imported into an annotation project made from these pairs line up with it (chosen = a)
    from rlhfkit.feedback.annotate import service
    from rlhfkit.feedback.annotate.db import open_database

    database = open_database(str(tmp_path / "store.sqlite"), create=True)
    with database.session() as s:
        project = service.create_project(s, service.ProjectSettings(name="panel"))
        for name, load in (("pairs.jsonl", service.import_pairs), ("judgments.jsonl", service.import_judgments)):
            load(s, project, service.jsonl_text_rows((tmp_path / "a" / name).read_text(), name), name)
        stored = service.export_judgments(s, project)
    database.close()
    assert len(stored) == len(judgments)
    for pair_id in by_pair:
        assert Counter(j["choice"] for j in stored if j["pair_id"] == pair_id).most_common(1)[0][0] == "a"

    matches = sum(r.metadata["gold_chosen"] >= r.metadata["gold_rejected"] for r in records) / len(records)
    assert first["panel_matches_gold"] == pytest.approx(matches, abs=1e-3)
    assert first["panel_matches_gold"] > 0.75

    for name in ("pairs.jsonl", "judgments.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert second["pairs"] == first["pairs"]


# ----------------------------------------------------------------------------------------------- reward model


def test_reward_train_learns_and_reloads(pairs_run, reward_run):
    summary, out = reward_run
    assert summary["best_val_accuracy"] > 0.65
    assert summary["best_step"] % 5 == 0 and summary["steps_run"] == 30
    disk = summary_json(out)
    assert disk["best_val_accuracy"] == summary["best_val_accuracy"]

    metrics = rows(out / "metrics.jsonl")
    evals = [r for r in metrics if "val_accuracy" in r]
    assert [r["step"] for r in evals] == [5, 10, 15, 20, 25, 30]
    assert max(r["val_accuracy"] for r in evals) == pytest.approx(summary["best_val_accuracy"], abs=1e-5)
    assert all(math.isfinite(r["loss"]) for r in metrics)

    train = load_records(out / "train_pairs.jsonl", "preference")
    val = load_records(out / "val_pairs.jsonl", "preference")
    assert {str(p.prompt) for p in train}.isdisjoint({str(p.prompt) for p in val})
    assert len(train) + len(val) == len(load_records(pairs_run[1], "preference"))
    assert len(val) == summary["val_pairs"] and len(train) == summary["train_pairs"]

    assert plain_reward(out / "model", RESTAURANT, POSITIVE) > plain_reward(out / "model", RESTAURANT, NEGATIVE)


def test_reward_train_margin_and_centering(pairs_run, tmp_path):
    # Every pair gets margin 1: with use_margin the first Bradley-Terry loss is softplus(1), not log 2 (rewards start
    # ~0).
    data = write_jsonl(tmp_path / "margin.jsonl", ({**r, "margin": 1.0} for r in rows(pairs_run[1])))
    common = dict(data=str(data), max_steps=6, eval_every=3, log_every=1, batch_size=8, lr=3e-4, patience=0, seed=0)
    plain = reward.train(RewardTrainConfig(output_dir=str(tmp_path / "plain"), **common))
    margin = reward.train(
        RewardTrainConfig(output_dir=str(tmp_path / "margin"), use_margin=True, center_coef=0.5, **common)
    )
    first_plain = rows(tmp_path / "plain" / "metrics.jsonl")[0]
    first_margin = rows(tmp_path / "margin" / "metrics.jsonl")[0]
    assert first_plain["loss"] == pytest.approx(math.log(2), abs=0.02)
    assert first_margin["loss"] == pytest.approx(math.log1p(math.e), abs=0.02)
    for s in (plain, margin):
        assert math.isfinite(s["best_val_loss"]) and (Path(s["model_dir"]) / "config.json").is_file()
    config = config_yaml(tmp_path / "margin")
    assert config["use_margin"] is True and config["center_coef"] == 0.5


def test_reward_train_minilm_backbone(pairs_run, tmp_path):
    data = write_jsonl(tmp_path / "few.jsonl", rows(pairs_run[1])[:8])
    summary = reward.train(
        RewardTrainConfig(
            model="minilm",
            data=str(data),
            output_dir=str(tmp_path / "rm"),
            max_steps=3,
            eval_every=3,
            batch_size=4,
            max_length=64,
            val_fraction=0.25,
            seed=0,
        )
    )
    assert summary["steps_run"] == 3 and summary["train_pairs"] + summary["val_pairs"] == 8
    model_dir = tmp_path / "rm" / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    assert model.config.model_type == "bert" and model.config.num_labels == 1
    batch = tokenizer([RESTAURANT, RESTAURANT], [POSITIVE, NEGATIVE], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


def hand_ece(margins: list[float], bins: int) -> float:
    """ECE written out independently: confidence max(p, 1-p), equal-width bins on [0.5, 1]."""
    groups: dict[int, list[tuple[float, float]]] = {}
    for m in margins:
        p = 1 / (1 + math.exp(-m))
        conf = max(p, 1 - p)
        b = min(bins - 1, math.floor((conf - 0.5) * 2 * bins))
        groups.setdefault(b, []).append((conf, 1.0 if m > 0 else 0.0))
    return sum(
        len(g) / len(margins) * abs(statistics.mean(a for _, a in g) - statistics.mean(c for c, _ in g))
        for g in groups.values()
    )


def test_reward_eval_summary_and_ece(pairs_run, reward_run, tmp_path):
    bins = 5
    summary = reward.evaluate(
        RewardEvalConfig(
            model=str(reward_run[1] / "model"), data=str(pairs_run[1]), output_dir=str(tmp_path), bins=bins
        )
    )
    for key in (
        "accuracy",
        "ece",
        "mean_margin",
        "length_correlation",
        "longer_preferred_share",
        "reliability",
        "gold_accuracy",
    ):
        assert key in summary, key
    assert summary_json(tmp_path)["accuracy"] == summary["accuracy"]
    assert len(summary["reliability"]) == bins
    assert sum(b["count"] for b in summary["reliability"]) == summary["pairs"]

    scores = rows(tmp_path / "scores.jsonl")
    assert len(scores) == summary["pairs"]
    margins = [s["reward_chosen"] - s["reward_rejected"] for s in scores]
    assert summary["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))
    assert summary["mean_margin"] == pytest.approx(statistics.mean(margins), abs=1e-4)
    assert summary["ece"] == pytest.approx(hand_ece(margins, bins), abs=1e-3)
    assert 0 <= summary["gold_accuracy"] <= 1 and summary["gold_pairs"] > 0
    assert summary["accuracy"] > 0.6  # evaluated mostly on its own training pairs


# ----------------------------------------------------------------------------------------------- DPO


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo"])
def test_dpo_loss_types_run_and_save(loss_type, sft_run, small_pairs, tmp_path):
    base_dir = sft_run[1] / "model"
    summary = dpo.run(
        DPOConfig(
            model=str(base_dir),
            data=str(small_pairs),
            output_dir=str(tmp_path),
            loss_type=loss_type,
            max_steps=3,
            batch_size=4,
            val_fraction=0.25,
            eval_every=3,
            log_every=1,
            lr=1e-4,
            seed=0,
        )
    )
    assert summary["loss_type"] == loss_type and summary["steps"] == 3
    metrics = rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in metrics)
    reference_free = loss_type in ("simpo", "orpo")
    assert (tmp_path / "ref_logps.pt").is_file() != reference_free
    assert (summary["reference"] is None) == reference_free
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    assert weights_differ(reloaded, load_causal_lm(base_dir))


def test_dpo_sigmoid_improves_validation(sft_run, pairs_run, tmp_path):
    summary = dpo.run(
        DPOConfig(
            model=str(sft_run[1] / "model"),
            data=str(pairs_run[1]),
            output_dir=str(tmp_path),
            max_steps=40,
            batch_size=8,
            val_fraction=0.25,
            eval_every=100,
            lr=1e-4,
            seed=0,
        )
    )
    before, after = summary["before"], summary["after"]
    assert before["val_loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
    assert after["val_loss"] < before["val_loss"]
    assert after["val_reward_accuracy"] > before["val_reward_accuracy"] and after["val_reward_accuracy"] >= 0.6
    assert after["val_reward_margin"] > before["val_reward_margin"] and after["val_reward_margin"] > 0
    assert summary["val_pairs"] == int(len(load_records(pairs_run[1], "preference")) * 0.25)


def test_dpo_reuses_cached_reference_logps(sft_run, small_pairs, tmp_path, capsys):
    config = dict(
        model=str(sft_run[1] / "model"),
        data=str(small_pairs),
        output_dir=str(tmp_path),
        max_steps=2,
        batch_size=4,
        val_fraction=0.25,
        seed=0,
    )
    first = dpo.run(DPOConfig(**config))
    cache = tmp_path / "ref_logps.pt"
    saved = torch.load(cache)
    stat = cache.stat()
    assert saved["logps"].shape == (16, 2)
    capsys.readouterr()

    second = dpo.run(DPOConfig(**config))
    err = " ".join(capsys.readouterr().err.split())
    assert "reusing cached reference log-probs" in err
    assert cache.stat().st_mtime_ns == stat.st_mtime_ns
    again = torch.load(cache)
    assert again["key"] == saved["key"] and torch.equal(again["logps"], saved["logps"])
    assert second["before"] == first["before"]

    # A different truncation changes the reference log-probs: the cache is recomputed, not reused.
    dpo.run(DPOConfig(**{**config, "max_length": 24}))
    assert "reusing" not in capsys.readouterr().err
    assert torch.load(cache)["key"] != saved["key"]

    # A rewritten reference model at the same path is not mistaken for the old one.
    model_dir = tmp_path / "ref"
    shutil.copytree(sft_run[1] / "model", model_dir)
    dpo.run(DPOConfig(**{**config, "model": str(model_dir)}))
    capsys.readouterr()
    weights = next(model_dir.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    dpo.run(DPOConfig(**{**config, "model": str(model_dir)}))
    assert "reusing" not in capsys.readouterr().err


def test_dpo_lora_merged_reloads(sft_run, small_pairs, tmp_path):
    base_dir = sft_run[1] / "model"
    summary = dpo.run(
        DPOConfig(
            model=str(base_dir),
            data=str(small_pairs),
            output_dir=str(tmp_path),
            lora=LoraSettings(r=4),
            max_steps=3,
            batch_size=4,
            val_fraction=0.25,
            lr=1e-3,
            seed=0,
        )
    )
    # The adapter-disabled policy is the reference: at the start the policy equals it exactly.
    assert summary["before"]["val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert not (tmp_path / "model" / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    assert weights_differ(reloaded, load_causal_lm(base_dir))
    assert causal_generates(tmp_path / "model").strip()


# ----------------------------------------------------------------------------------------------- evaluation, demo, CLI


def test_policy_eval_writes_results(reward_run, tmp_path):
    from rlhfkit.evaluate.diversity import distinct_n

    results = policy.run(
        EvalConfig(
            models={"a": "default"},
            reward_model=str(reward_run[1] / "model"),
            output_dir=str(tmp_path),
            num_prompts=6,
            samples_per_prompt=2,
            max_new_tokens=32,
        )
    )
    for name in ("eval.json", "eval.md", "samples.jsonl"):
        assert (tmp_path / name).is_file(), name
    row = results["a"]
    for key in ("mean_gold", "mean_reward", "distinct_2", "mean_length"):
        assert key in row and math.isfinite(row[key]), key
    assert json.loads((tmp_path / "eval.json").read_text())["results"]["a"]["mean_gold"] == pytest.approx(
        row["mean_gold"]
    )
    assert "| a |" in (tmp_path / "eval.md").read_text()

    samples = rows(tmp_path / "samples.jsonl")
    assert len(samples) == 12 and row["samples"] == 12 and {s["model"] for s in samples} == {"a"}
    responses = [s["response"] for s in samples]
    assert row["mean_gold"] == pytest.approx(statistics.mean(s["gold"] for s in samples), abs=1e-3)
    gold = [gold_score(s["response"], s["prompt"]) for s in samples]
    assert row["mean_gold"] == pytest.approx(statistics.mean(gold), abs=1e-6)
    assert row["mean_reward"] == pytest.approx(statistics.mean(s["reward"] for s in samples), abs=1e-3)
    assert row["distinct_2"] == pytest.approx(distinct_n(responses, 2))
    assert row["mean_length"] == pytest.approx(statistics.mean(len(r.split()) for r in responses))
    heldout = {r.prompt for r in load_records(ensure_default().heldout_prompts, "prompt")}
    assert all(s["prompt"].strip() in heldout for s in samples)


def test_small_demo_end_to_end(tiny_demo):
    root, summary = tiny_demo  # the session's small demo (tests/conftest.py), shared with test_report.py
    on_disk = json.loads((root / "demo_summary.json").read_text())
    for key in ("gold_sft", "gold_dpo", "reward_gold_accuracy", "distinct2_ratio"):
        assert on_disk[key] is not None and math.isfinite(on_disk[key]), key
    assert on_disk["gold_gain"] == pytest.approx(on_disk["gold_dpo"] - on_disk["gold_sft"])
    assert summary["pairs"] == on_disk["pairs"] and on_disk["pairs"] > 100
    for stage in ("sft", "pairs", "reward", "reward_eval", "dpo", "eval"):
        assert (root / stage / "config.yaml").is_file(), stage
        if stage != "eval":
            assert (root / stage / "summary.json").is_file(), stage
    assert (root / "eval" / "eval.json").is_file()
    assert config_yaml(root / "sft")["max_steps"] == 10
    assert config_yaml(root / "dpo")["model"] == str(root / "sft" / "model")
    assert yaml.safe_load((root / "pipeline.yaml").read_text())["stages"][1]["config"]["num_prompts"] == 120
    assert summary["gate_passed"] is True and summary["report"] == str(root / "report.html")

    # The same settings as the command line's NAME.KEY=VALUE overrides: a second demo run reuses every stage.
    overrides = [
        f"{stage}.{key}={json.dumps(value)}" for stage, keys in TINY_DEMO.items() for key, value in keys.items()
    ]
    again = demo.run([f"output_dir={root}", *overrides])
    assert set(again["stages"].values()) == {"skipped"}
    assert again["gold_dpo"] == summary["gold_dpo"]


def test_cli_overrides_reach_the_saved_config(tmp_path, cli_in_process):
    out = tmp_path / "run"
    result = cli_in_process(
        "sft", f"output_dir={out}", "max_steps=3", "--lr", "1e-4", "--batch_size=4", "val_fraction=0.01"
    )
    assert result.returncode == 0, result.stderr
    config = config_yaml(out)
    assert config["lr"] == 0.0001 and config["max_steps"] == 3 and config["batch_size"] == 4
    assert summary_json(out)["steps"] == 3
    assert (out / "model" / "config.json").is_file()
