"""Online DPO and REINFORCE++ end to end on the embedded default model, kept tiny for a 2-core CPU.

The judge (online DPO) and the reward (REINFORCE++) are the gold review judge (`RewardSpec(function="default")`),
so learning can be checked without a reward model. Every test looks at what a user sees: metrics.jsonl rows,
held-out gold from `rlhfkit eval`, saved models that reload in plain transformers, a run killed with kill -9
that resumes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit import online
from rlhfkit.config import EvalConfig, LoraSettings, OnlineDPOConfig, ReinforcePPConfig, RewardSpec, build_config
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate.detectors import load_metrics, run_detectors
from rlhfkit.evaluate.policy import run as evaluate
from rlhfkit.resolve import resolve_model_path
from rlhfkit.stages import online_dpo, reinforce_pp

DEFAULT = resolve_model_path("default")
TINY = dict(rewards=[RewardSpec(function="default")], max_new_tokens=16, seed=0)
HEADLINE = ("reward", "gold", "kl", "entropy", "response_length", "distinct_2", "stock_phrase_share")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def state(model_dir: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(str(model_dir)).state_dict()


def check_plain_model(model_dir: Path) -> None:
    """model/ reloads with plain transformers, generates, and holds weights other than the default's."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    ids = tokenizer("We had dinner at the little Italian place downtown last week.", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    base, trained = state(DEFAULT), model.state_dict()
    assert trained.keys() == base.keys() and any(not torch.equal(trained[k], base[k]) for k in base)


def check_detectors_read(out: Path) -> None:
    """Every detector of `rlhfkit detect` finds the metrics it reads (reward, gold, kl, length, distinct-2, ...)."""
    verdicts = run_detectors(load_metrics(out / "metrics.jsonl"))
    assert len(verdicts) == 5 and not [v.summary for v in verdicts if "not judged" in v.summary]


def finite(row: dict, keys) -> None:
    for key in keys:
        assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (key, row.get(key))


def heldout_gold(model_dir: Path, out: Path) -> dict[str, float]:
    """Mean gold on the 72 held-out prompts (one sample each) of the default and of the trained policy."""
    evaluate(EvalConfig(models={"base": "default", "trained": str(model_dir)}, gold="default", output_dir=str(out),
                        samples_per_prompt=1, max_new_tokens=16, seed=1234))  # fmt: skip
    results = json.loads((out / "eval.json").read_text())["results"]
    return {name: row["mean_gold"] for name, row in results.items()}


# ----------------------------------------------------------------------------------------------- pure parts


def test_label_pairs_by_hand():
    scores = torch.tensor([0.1, 0.7, 0.5, -0.2, 0.3, 0.3])
    chosen, rejected, labelled = online_dpo.label_pairs(scores)
    assert chosen.tolist() == [1, 2, 4] and rejected.tolist() == [0, 3, 5]
    assert labelled.tolist() == [True, True, False]  # equal scores: a tie, no label
    with pytest.raises(ValueError, match="even length"):
        online_dpo.label_pairs(torch.tensor([1.0, 2.0, 3.0]))


def test_reinforce_pp_token_rewards_by_hand():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    token_kl = torch.tensor([[0.1, -0.2, 0.4, 9.0], [0.3, 9.0, 9.0, 9.0]])
    rewards = reinforce_pp.token_rewards(torch.tensor([1.0, -1.0]), token_kl, mask, kl_coef=0.5)
    # -kl_coef * KL_t on every response token, the score added on the last one, 0 after it
    expected = torch.tensor([[-0.05, 0.1, -0.2 + 1.0, 0.0], [-0.15 - 1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_configs_refuse_what_cannot_work():
    with pytest.raises(ConfigError, match="group_size to 2 or more"):
        build_config(
            ReinforcePPConfig, {"rewards": [{"function": "default"}], "advantage_estimator": "reinforce_pp_baseline"}
        )
    with pytest.raises(ConfigError, match="kl_coef"):
        build_config(OnlineDPOConfig, {"rewards": [{"function": "default"}], "kl_coef": 0.1})  # beta does that
    with pytest.raises(ConfigError, match="loss_type"):
        build_config(OnlineDPOConfig, {"rewards": [{"function": "default"}], "loss_type": "kto"})


# ----------------------------------------------------------------------------------------------- online DPO


def test_online_dpo_runs_logs_and_saves(tmp_path):
    out = tmp_path / "odpo"
    summary = online_dpo.run(OnlineDPOConfig(output_dir=str(out), steps=3, batch_size=4, mini_batch_size=8, **TINY))
    metrics = rows(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3] and summary["final"]["step"] == 3
    pair_keys = ("reward_chosen", "reward_rejected", "reward_margin", "tie_share", "gold_agreement", "dpo_loss",
                 "implicit_reward_accuracy", "implicit_reward_margin")  # fmt: skip
    for r in metrics:
        finite(r, (*HEADLINE, *pair_keys, *(f"{k}_avg" for k in HEADLINE[:6])))
        assert r["reward_chosen"] > r["reward_rejected"] and r["reward_margin"] > 0
        assert r["tie_share"] == 0  # the gold judge rarely scores two different reviews the same
        assert r["gold_agreement"] == 1.0  # the judge is the gold judge here: it agrees with itself
        assert 0 <= r["implicit_reward_accuracy"] <= 1
    # Step 1 updates from the reference itself: the policy's log-ratios are 0, so the sigmoid loss is log 2.
    assert abs(metrics[0]["kl"]) < 1e-4
    assert metrics[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics[0]["implicit_reward_margin"] == pytest.approx(0, abs=1e-4)
    assert metrics[-1]["kl"] > 1e-3
    assert json.loads((out / "summary.json").read_text())["stage"] == "online-dpo"
    check_detectors_read(out)
    assert yaml.safe_load((out / "config.yaml").read_text())["loss_type"] == "sigmoid"
    check_plain_model(out / "model")


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_online_dpo_reference_free_losses(loss_type, tmp_path):
    out = tmp_path / loss_type
    online_dpo.run(OnlineDPOConfig(output_dir=str(out), steps=2, batch_size=4, mini_batch_size=8, beta=2.0,
                                   loss_type=loss_type, **TINY))  # fmt: skip
    first, last = rows(out / "metrics.jsonl")
    # reference-free: the implicit rewards are beta * the per-token mean log-prob of each response, never 0 as
    # DPO's beta * (logp - ref_logp) is at step 1, and negative (a log-prob); the policy moves off the reference
    assert first["implicit_reward_chosen"] < -0.1 and first["implicit_reward_rejected"] < -0.1
    assert abs(first["kl"]) < 1e-4 and last["kl"] > 1e-4
    if loss_type == "simpo":  # at a zero mean-log-prob margin the loss is -logsigmoid(-gamma) = 0.974 (gamma 0.5)
        assert 0 < first["dpo_loss"] < 5
    else:  # ORPO adds the chosen response's NLL (the per-token mean), which is larger than its odds-ratio term
        assert first["dpo_loss"] > -first["implicit_reward_chosen"] / 2.0
    assert yaml.safe_load((out / "config.yaml").read_text())["loss_type"] == loss_type


def test_online_dpo_drops_ties_from_the_step(tmp_path, monkeypatch):
    (tmp_path / "flat_judge.py").write_text("def same(prompts, responses):\n    return [0.5 for _ in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "odpo"
    config = OnlineDPOConfig(output_dir=str(out), steps=2, batch_size=4, mini_batch_size=8,
                             **{**TINY, "rewards": [RewardSpec(function="flat_judge:same")]})  # fmt: skip
    online_dpo.run(config)
    for r in rows(out / "metrics.jsonl"):
        assert r["tie_share"] == 1.0
        assert "dpo_loss" not in r and "reward_chosen" not in r  # no labelled pair: nothing to average
    base, trained = state(DEFAULT), state(out / "model")
    assert all(torch.equal(base[k], trained[k]) for k in base)  # every pair tied: no step was taken


def test_online_dpo_raises_heldout_gold(tmp_path):
    # The gold judge labels the pairs; held-out gold by that judge (72 prompts never trained on) must rise clearly.
    # Seeds 0-4 (2026-12-02, one thread): held-out gold -0.16..-0.10 -> 0.38..0.58 after 30 iterations (8-14 s).
    out = tmp_path / "odpo"
    online_dpo.run(OnlineDPOConfig(output_dir=str(out), steps=30, batch_size=16, mini_batch_size=32, lr=2e-4,
                                   gold=None, save_every=30, **TINY))  # fmt: skip
    gold = heldout_gold(out / "model", tmp_path / "eval")
    assert gold["trained"] > gold["base"] + 0.3, gold


def test_online_dpo_lora_uses_the_adapter_disabled_reference(tmp_path):
    config = OnlineDPOConfig(output_dir=str(tmp_path / "odpo"), steps=3, batch_size=4, mini_batch_size=8, lr=1e-3,
                             lora=LoraSettings(r=4), **TINY)  # fmt: skip
    policy = online.load_policy(config)
    assert policy.reference is None  # no second copy: the reference is the policy with its adapter switched off
    del policy
    online_dpo.run(config)
    metrics = rows(tmp_path / "odpo" / "metrics.jsonl")
    assert abs(metrics[0]["kl"]) < 1e-4 and metrics[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert max(abs(r["kl"]) for r in metrics[1:]) > 1e-3  # the adapter moves, the reference does not
    assert not (tmp_path / "odpo" / "model" / "adapter_config.json").exists()  # merged into a plain model
    check_plain_model(tmp_path / "odpo" / "model")


# ----------------------------------------------------------------------------------------------- REINFORCE++


@pytest.mark.parametrize("estimator", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_runs_logs_and_saves(estimator, tmp_path):
    out = tmp_path / "rpp"
    group = {"group_size": 2} if estimator == "reinforce_pp_baseline" else {}
    config = ReinforcePPConfig(output_dir=str(out), steps=3, batch_size=4, mini_batch_size=4, lr=1e-4,
                               advantage_estimator=estimator, **group, **TINY)  # fmt: skip
    reinforce_pp.run(config)
    metrics = rows(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3]
    for r in metrics:
        finite(r, (*HEADLINE, "policy_loss", "clip_fraction", "approx_kl", "return", "lr"))
        assert r["reward"] == pytest.approx(r["gold"], abs=1e-5) and 0 <= r["clip_fraction"] <= 1
        assert "value_loss" not in r  # critic-free
    assert abs(metrics[0]["kl"]) < 1e-4
    # at the first step the policy is the reference (k1 KL ~0), so the return is the score alone; with the baseline,
    # the score less its group's mean, which averages 0
    assert metrics[0]["return"] == pytest.approx(0.0 if group else metrics[0]["reward"], abs=1e-3)
    if group:
        assert all(r["group_reward_std"] >= 0 for r in metrics)
    assert json.loads((out / "summary.json").read_text())["stage"] == "reinforce-pp"
    check_detectors_read(out)
    check_plain_model(out / "model")


def test_reinforce_pp_learns_an_easy_reward(tmp_path):
    # The gold judge rewards positive reviews. Seeds 0-4 (2026-12-02, one thread): the batch reward's last-10 mean
    # over its first-5 mean rose by 0.27-0.43 (held-out gold -0.16..-0.10 -> 0.37..0.57, not re-measured here).
    out = tmp_path / "rpp"
    reinforce_pp.run(ReinforcePPConfig(output_dir=str(out), steps=20, batch_size=16, mini_batch_size=16, lr=2e-4,
                                       gold=None, save_every=20, **TINY))  # fmt: skip
    rewards = [r["reward"] for r in rows(out / "metrics.jsonl")]
    assert sum(rewards[-10:]) / 10 > sum(rewards[:5]) / 5 + 0.15, rewards
    assert rows(out / "metrics.jsonl")[-1]["kl"] > 0.1  # it got there by moving away from the reference


def test_reinforce_pp_lora_uses_the_adapter_disabled_reference(tmp_path):
    config = ReinforcePPConfig(output_dir=str(tmp_path / "rpp"), steps=3, batch_size=4, mini_batch_size=4, lr=1e-3,
                               lora=LoraSettings(r=4), **TINY)  # fmt: skip
    reinforce_pp.run(config)
    metrics = rows(tmp_path / "rpp" / "metrics.jsonl")
    assert abs(metrics[0]["kl"]) < 1e-4
    assert max(abs(r["kl"]) for r in metrics[1:]) > 1e-3
    check_plain_model(tmp_path / "rpp" / "model")


# ----------------------------------------------------------------------------------------------- kill -9, pipeline


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhfkit.cli", *args]


def env() -> dict:
    return {**os.environ, "RLHFKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


KILL = {  # stage: (its run function and config, the metrics a resumed run must give again)
    "online-dpo": (online_dpo.run, OnlineDPOConfig, ("dpo_loss", "reward_margin", "implicit_reward_accuracy")),
    "reinforce-pp": (reinforce_pp.run, ReinforcePPConfig, ("policy_loss", "return", "clip_fraction")),
}


@pytest.mark.parametrize("stage", sorted(KILL))
def test_kill_9_then_resume_reaches_the_uninterrupted_result(stage, tmp_path):
    run, config_class, keys = KILL[stage]
    settings = dict(steps=4, batch_size=4, mini_batch_size=4, lr=1e-4, max_new_tokens=16, save_every=2, threads=1)
    run(config_class(output_dir=str(tmp_path / "straight"), rewards=[RewardSpec(function="default")], **settings))
    args = [stage, "rewards=[{function: default}]", *(f"{k}={v}" for k, v in settings.items())]
    out = tmp_path / "killed"
    process = subprocess.Popen(cli(*args, f"output_dir={out}"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=env())  # fmt: skip
    deadline = time.time() + 240
    # killed after the step-2 checkpoint, once step 3 is logged: mid-way to the next checkpoint
    while not ((out / "checkpoints" / "step-000002").is_dir() and (out / "metrics.jsonl").is_file()
               and any(r["step"] >= 3 for r in rows(out / "metrics.jsonl"))):  # fmt: skip
        assert process.poll() is None, f"the run ended before it could be killed:\n{process.stderr.read()[-3000:]}"
        assert time.time() < deadline, "the run never reached the point to kill it"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "model").exists()
    resumed = subprocess.run(cli(*args, f"output_dir={out}", "resume=true"), capture_output=True, text=True,
                             env=env(), timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "step-000002" in "".join(resumed.stderr.split())
    again, first = rows(out / "metrics.jsonl"), rows(tmp_path / "straight" / "metrics.jsonl")
    assert [r["step"] for r in again] == [1, 2, 3, 4]  # the killed run's step 3 is dropped, none twice
    for a, b in zip(again, first):
        # sampler, prompt position and optimizer restored: the same draws, labels and updates
        for key in ("reward", "kl", "entropy", "reward_avg", *keys):
            assert a[key] == pytest.approx(b[key], abs=1e-4), (a["step"], key)
    sa, sb = state(out / "model"), state(tmp_path / "straight" / "model")
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-5, rtol=1e-4)


def test_pipeline_runs_both_stages(tmp_path):
    from rlhfkit import pipeline

    path = tmp_path / "pipeline.yaml"
    tiny = "rewards: [{function: default}], steps: 1, batch_size: 2, mini_batch_size: 4, max_new_tokens: 8"
    path.write_text(
        f"output_dir: {tmp_path / 'runs'}\nreport: false\nstages:\n"
        f"  - {{name: odpo, stage: online-dpo, config: {{{tiny}}}}}\n"
        f"  - {{name: rpp, stage: reinforce-pp, config: {{model: '${{odpo}}/model', {tiny}}}}}\n"
    )
    pipeline.run(pipeline.load_pipeline(path))
    for name in ("odpo", "rpp"):
        assert [r["step"] for r in rows(tmp_path / "runs" / name / "metrics.jsonl")] == [1]
    summary = json.loads((tmp_path / "runs" / "rpp" / "summary.json").read_text())
    assert summary["model"] == str(tmp_path / "runs" / "odpo" / "model")
