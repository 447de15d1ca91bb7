"""KTO end to end on the embedded default model (a few steps on a dozen thumbs up/down), and its small parts."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.config import KTOConfig, LoraSettings
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.resolve import resolve_model_path
from rlhfkit.stages import kto

DEFAULT = resolve_model_path("default")
PLACES = ["the little Italian place downtown", "the noodle bar on Main Street", "the new burger joint",
          "the seaside cafe", "the steakhouse by the station", "the vegan bistro", "the taco truck",
          "the sushi counter", "the French brasserie", "the pizza place near campus", "the dim sum hall",
          "the diner on the corner"]  # fmt: skip
POSITIVE = " The food was wonderful and the staff were lovely. I would definitely recommend it."
NEGATIVE = " The food was awful and the staff were rude. Never again."


def thumbs(folder: Path) -> Path:
    """12 examples, two thumbs up for every thumb down."""
    rows = [
        {"id": i, "prompt": f"We had dinner at {p} last week.", "completion": POSITIVE if i % 3 else NEGATIVE,
         "label": bool(i % 3)}
        for i, p in enumerate(PLACES)
    ]  # fmt: skip
    path = folder / "thumbs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_kto_learns_thumbs_reports_balance_and_saves(tmp_path):
    out = tmp_path / "kto"
    config = KTOConfig(
        data=str(thumbs(tmp_path)), output_dir=str(out), max_steps=6, batch_size=4, val_fraction=0.25,
        eval_every=3, log_every=1, lr=1e-4, seed=0,
    )  # fmt: skip
    summary = kto.run(config)
    # the balance weights: the rarer label (thumbs down) weighs n_up / n_down, so both labels weigh the same
    n_up, n_down = summary["desirable"], summary["undesirable"]
    assert n_up + n_down == summary["train_examples"] == 9 and n_up > n_down
    assert (summary["desirable_weight"], summary["undesirable_weight"]) == (1.0, n_up / n_down)
    assert summary["balance"] == pytest.approx(1.0)
    # at the start policy == reference: every reward is 0, so a loss is its weight * (1 - sigmoid(0)) = weight / 2
    before, after = summary["before"], summary["after"]
    n_val_up = round(before["val_desirable_share"] * 3)
    assert before["val_loss"] == pytest.approx((n_val_up * 0.5 + (3 - n_val_up) * 0.5 * n_up / n_down) / 3)
    assert before["val_reward_desirable"] == 0 and before["val_reward_undesirable"] == 0
    assert after["val_loss"] < before["val_loss"]
    assert after["val_reward_desirable"] > 0 > after["val_reward_undesirable"]
    assert after["val_reward_accuracy"] > before["val_reward_accuracy"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == list(range(1, 7))
    for r in metrics:
        assert all(math.isfinite(r[k]) for k in ("loss", "kl", "reward_accuracy", "reward_signed", "grad_norm"))
    assert torch.load(out / "ref_logps.pt")["logps"].shape == (12, 2)  # matched and mismatched, cached once
    assert json.loads((out / "summary.json").read_text())["balance"] == summary["balance"]
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    base = load_causal_lm(DEFAULT).state_dict()
    assert any(not torch.equal(v, base[k]) for k, v in model.state_dict().items())
    ids = tokenizer("We had dinner at the seaside cafe last week.", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]


def test_kl_pairs_are_a_derangement():
    for n in (2, 3, 10):
        partner = kto.mismatched(n, seed=1)
        assert sorted(partner) == list(range(n)) and all(partner[i] != i for i in range(n))


def test_balance_weights_keep_what_is_set():
    auto = KTOConfig(data="x", output_dir="o")
    assert kto.balance_weights(10, 2, auto) == (1.0, 5.0)
    assert kto.balance_weights(2, 10, auto) == (5.0, 1.0)
    assert kto.balance_weights(4, 2, KTOConfig(data="x", desirable_weight=0.5, undesirable_weight=1.0)) == (0.5, 1.0)
    assert kto.balance_weights(4, 2, KTOConfig(data="x", desirable_weight=3.0)) == (3.0, 2.0)


def test_resume_from_a_checkpoint_reaches_the_uninterrupted_result(tmp_path):
    """What a kill -9 after the step-2 checkpoint leaves (checkpoints/, ref_logps.pt, rows up to step 3), resumed."""
    settings = dict(data=str(thumbs(tmp_path)), max_steps=4, batch_size=4, val_fraction=0.25, eval_every=2,
                    log_every=1, checkpoint_every=2, lr=1e-4, seed=0)  # fmt: skip
    straight = tmp_path / "straight"
    kto.run(KTOConfig(output_dir=str(straight), **settings))
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(straight / "checkpoints" / "step-000002", killed / "checkpoints" / "step-000002")
    shutil.copy(straight / "ref_logps.pt", killed / "ref_logps.pt")
    lines = (straight / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")  # step 3 was logged, not checkpointed
    resumed = kto.run(KTOConfig(output_dir=str(killed), resume=True, **settings))
    assert resumed["resumed_from"] == 2

    def drop_time(path: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(r).items() if k != "time"} for r in path.read_text().splitlines()]

    assert drop_time(killed / "metrics.jsonl") == drop_time(straight / "metrics.jsonl")
    a = AutoModelForCausalLM.from_pretrained(str(straight / "model")).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(killed / "model")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_reference_is_the_adapter_disabled_policy(tmp_path):
    out = tmp_path / "kto"
    summary = kto.run(
        KTOConfig(
            data=str(thumbs(tmp_path)),
            output_dir=str(out),
            lora=LoraSettings(r=4),
            max_steps=2,
            batch_size=4,
            val_fraction=0.25,
            lr=1e-3,
            seed=0,
        )  # fmt: skip
    )
    # LoRA starts as a no-op, so the policy equals its adapter-disabled reference: every reward is exactly 0
    assert summary["before"]["val_reward_desirable"] == 0 and summary["before"]["val_reward_undesirable"] == 0
    assert summary["after"]["val_reward_desirable"] != 0
    assert not (out / "model" / "adapter_config.json").exists()  # merged into a plain model
    AutoModelForCausalLM.from_pretrained(str(out / "model"))
