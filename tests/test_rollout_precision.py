"""Reduced-precision sampling (rollout_dtype=bfloat16): the truncated importance weights by hand, no change with
float32, the bf16 copy in step with the policy (LoRA merged), and a GRPO run that logs a small, finite mismatch."""

from __future__ import annotations

import json
import math
from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch
from peft.tuners.lora import LoraLayer

from rlhfkit import online
from rlhfkit.config import GRPOConfig, LoraSettings, RewardSpec
from rlhfkit.errors import ConfigError
from rlhfkit.losses import grpo_policy_loss, truncated_importance_weights
from rlhfkit.models.loading import apply_lora, load_causal_lm
from rlhfkit.resolve import resolve_model_path
from rlhfkit.stages import grpo

GOLD = [RewardSpec(function="default")]


def test_truncated_importance_weights_by_hand():
    trainer = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, 9.0]])
    sampler = torch.tensor([[-1.1, -1.0, -0.5], [-3.0, -1.5, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last token is padding: garbage there
    weights, stats = truncated_importance_weights(trainer, sampler, mask, cap=1.5)
    # exp(0.1), exp(-1), exp(0), exp(0), exp(0.5) = 1.6487 cut to 1.5, and 0 at the padding
    expected = torch.tensor([[math.exp(0.1), math.exp(-1.0), 1.0], [1.0, 1.5, 0.0]])
    assert torch.allclose(weights, expected, atol=1e-6)
    assert stats["is_logratio_mean"] == pytest.approx((0.1 + 1.0 + 0.0 + 0.0 + 0.5) / 5, abs=1e-6)
    assert stats["is_logratio_max"] == pytest.approx(1.0, abs=1e-6)
    assert stats["is_clipped_share"] == pytest.approx(1 / 5)
    assert not weights.requires_grad
    with pytest.raises(ValueError, match="cap must be >= 1"):
        truncated_importance_weights(trainer, sampler, mask, cap=0.5)


def test_equal_log_probs_give_weights_of_exactly_one_and_float32_changes_nothing():
    logps = torch.randn(3, 5) - 2
    mask = torch.ones(3, 5)
    weights, stats = truncated_importance_weights(logps, logps, mask)
    assert torch.equal(weights, torch.ones(3, 5))
    assert stats == {"is_logratio_mean": 0.0, "is_logratio_max": 0.0, "is_clipped_share": 0.0}
    # rollout_dtype=float32: the sampled log-probs are the old log-probs and no weights enter the loss
    config = GRPOConfig(rewards=GOLD)
    batch = SimpleNamespace(logps=logps, trainer_logps=None)
    rows = torch.tensor([2, 0])
    old, weights, stats = online.correction_weights(config, batch, rows, logps[rows] + 0.3, mask[rows])
    assert torch.equal(old, logps[rows]) and weights is None and stats == {}


def test_weights_multiply_each_tokens_policy_gradient_term():
    # at ratio 1 the clipped term of a token is -A, so the dapo loss is the weighted token mean of -A
    logps = torch.zeros(2, 3, requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    weights = torch.tensor([[2.0, 0.5, 7.0], [1.0, 1.5, 0.25]])
    loss, _ = grpo_policy_loss(logps, logps.detach(), advantages, mask, loss_type="dapo", weights=weights)
    assert loss.item() == pytest.approx(-(2.0 + 0.5 - 2.0 - 3.0 - 0.5) / 5)
    loss.backward()
    assert logps.grad[0, 0].item() == pytest.approx(-2.0 / 5)  # d/dlogp of -w A ratio at ratio 1: -w A / tokens
    unweighted, _ = grpo_policy_loss(logps, logps.detach(), advantages, mask, loss_type="grpo")
    ones, _ = grpo_policy_loss(logps, logps.detach(), advantages, mask, loss_type="grpo", weights=torch.ones(2, 3))
    assert ones.item() == unweighted.item()


def test_bf16_copy_follows_the_policy_and_merges_lora():
    model = load_causal_lm(resolve_model_path("default"))
    copy = online.SamplingCopy(model)
    assert all(p.dtype == torch.bfloat16 for p in copy.model.parameters())
    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # an update
    copy.refresh()
    for (name, mine), theirs in zip(copy.model.named_parameters(), model.parameters()):
        assert torch.equal(mine, theirs.to(torch.bfloat16)), name
    lora = apply_lora(model, LoraSettings(r=4))
    copy = online.SamplingCopy(lora)
    assert not hasattr(copy.model, "peft_config")  # a plain model: no adapter matmuls while sampling
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # the adapter trains (a fresh one is a no-op)
    copy.refresh()
    merged = deepcopy(lora).merge_and_unload().state_dict()  # peft's own merge, in fp32
    for name, mine in copy.model.state_dict().items():
        assert torch.allclose(mine.float(), merged[name], rtol=1e-2, atol=1e-3), name
    adapted = [name for name, m in lora.get_base_model().named_modules() if isinstance(m, LoraLayer)]
    assert adapted
    for name in adapted:  # the adapter's delta reached the copy
        base = lora.get_base_model().get_submodule(name).get_base_layer().weight
        assert not torch.equal(copy.model.get_submodule(name).weight, base.to(torch.bfloat16)), name


def test_bf16_rollout_is_refused_with_fsdp():
    config = GRPOConfig(rewards=GOLD, rollout_dtype="bfloat16")
    policy = online.Policy(torch.nn.Linear(2, 2), None, None, None, sampler=object())
    with pytest.raises(ConfigError, match="rollout_dtype=bfloat16 with fsdp=true"):
        online.shard(SimpleNamespace(fsdp=True), policy, None)
    assert config.is_cap == 2.0


def test_grpo_with_bf16_sampling_logs_a_small_mismatch_and_trains(tmp_path, capsys):
    out = tmp_path / "grpo"
    config = GRPOConfig(
        output_dir=str(out), steps=2, batch_size=2, group_size=4, mini_batch_size=8, lr=1e-4, rewards=GOLD,
        max_new_tokens=12, rollout_dtype="bfloat16",
    )  # fmt: skip
    grpo.run(config)
    printed = capsys.readouterr()
    assert "disagree" not in printed.out + printed.err  # under is_warn_logratio: no warning
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2]
    for r in metrics:
        assert 0 < r["is_logratio_mean"] < 0.05 and r["is_logratio_mean"] <= r["is_logratio_max"] < 1
        assert 0 <= r["is_clipped_share"] < 0.05
        assert math.isfinite(r["policy_loss"]) and r["grad_norm"] > 0
        assert r["sampler_refresh_seconds"] >= 0
    # one gradient step per iteration: the ratio is against the fp32 policy itself, exactly 1
    assert metrics[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    trained = load_causal_lm(out / "model").state_dict()
    start = load_causal_lm(resolve_model_path("default")).state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # the fp32 policy was updated
    # the warning, when the gap is over is_warn_logratio
    alarm = online.SignalAlarm(config.model_copy(update={"is_warn_logratio": 1e-6}))
    alarm.check(3, metrics[-1])
    assert "the bf16 sampler and the fp32 policy disagree" in capsys.readouterr().err
