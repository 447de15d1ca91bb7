"""REINFORCE++ (Hu 2025): critic-free PPO-style updates with token-level rewards and a global-batch baseline.

One iteration: sample `batch_size` prompts x `group_size` responses -> score them -> per-token rewards =
-kl_coef * KL_t (k1 against the reference), plus the score on the last token -> returns = the sum of the future
token rewards (discount `gamma`), no value model -> advantages whitened over every token of the global batch
(`losses.reinforce_pp_advantages`, across processes under DDP) -> the clipped ratio loss of grpo
(`losses.grpo_policy_loss`, `loss_type`, `clip_low`/`clip_high`). `advantage_estimator=reinforce_pp_baseline`
subtracts the mean score of each prompt's group first (OpenRLHF's reinforce_baseline).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import online
from ..config import ReinforcePPConfig, save_config
from ..console import progress_bar
from ..errors import ConfigError
from ..losses import group_advantages, grpo_policy_loss, kl_penalty, masked_mean, reinforce_pp_advantages
from ..runtime import clip_grad_norm, start


def token_rewards(scores: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """[B, T] rewards: -kl_coef * KL_t on every response token, plus the sequence's score on its last token."""
    rewards = -kl_coef * token_kl * mask
    last = (mask.sum(1) - 1).clamp(min=0).long()
    rewards[torch.arange(len(last)), last] += scores.to(rewards.dtype)
    return rewards


def run(config: ReinforcePPConfig) -> dict:
    out = Path(config.output_dir)
    runtime = start(config)  # one process, or this process's place among N (each samples its share of the prompts)
    if config.mini_batch_size % runtime.world:
        raise ConfigError(
            f"mini_batch_size {config.mini_batch_size} must split evenly among the {runtime.world} processes"
        )
    k = config.group_size
    reward_fn, gold, policy, prompts = online.setup(config)
    optimizer, scheduler, params, generator, modules, start_step, last_ckpt, _, trained = online.start_policy_training(
        config, runtime, policy, prompts
    )
    if runtime.is_main:
        save_config(config, out)
    log = online.run_log(config, out, resume_step=start_step if last_ckpt else None, enabled=runtime.is_main)
    group = "group_size" if k > 1 else None
    alarm = online.SignalAlarm(config, group, runtime.is_main, zero_loss_note=True)
    row: dict = {}
    with progress_bar("reinforce-pp", config.steps) as advance:
        advance(start_step)
        for step in range(start_step + 1, config.steps + 1):
            t0 = time.time()
            # each prompt group_size times in a row: consecutive rows form a prompt's group
            indices = [i for i in runtime.shard(prompts.take(config.batch_size)) for _ in range(k)]
            batch = online.sample_batch(policy, prompts, indices, reward_fn, gold, config, generator)
            mask = batch.mask
            scores = batch.scores
            if config.advantage_estimator == "reinforce_pp_baseline":
                scores = group_advantages(scores, k, normalize=False)  # score - its prompt's group mean
            token_kl = kl_penalty(batch.logps, batch.ref_logps, config.kl_estimator)
            rewards = token_rewards(scores, token_kl, mask, config.kl_coef)
            # the whitening statistics are summed over every process: one global batch, as in REINFORCE++
            advantages, returns = reinforce_pp_advantages(rewards, mask, config.gamma, reduce=runtime.sum)
            input_ids, attention_mask = batch.rollout.full()
            prompt_len = batch.rollout.prompt_ids.shape[1]
            stats: dict[str, float] = {}
            n_updates = 0
            size = config.mini_batch_size // runtime.world
            online.add_trainer_logps(policy, batch, config, size)  # bf16 rollouts with several steps: fp32 old logps
            for idx in online.minibatches(len(indices), size, config.epochs_per_batch):
                logps, entropy = policy.logps(
                    trained, input_ids[idx], attention_mask[idx], prompt_len, config.temperature, with_entropy=True
                )
                # bf16 rollouts: the ratio against the fp32 policy, and token weights for the sampler's mismatch
                old_logps, is_weights, is_stats = online.correction_weights(config, batch, idx, logps, mask[idx])
                loss, pg_stats = grpo_policy_loss(
                    logps,
                    old_logps,
                    advantages[idx],
                    mask[idx],
                    loss_type=config.loss_type,
                    clip_low=config.clip_low,
                    clip_high=config.clip_high,
                    max_tokens=config.max_new_tokens,
                    weights=is_weights,
                )
                online.guard(step, loss, batch.stats["kl"], config, last_ckpt)
                loss.backward()
                grad_norm = clip_grad_norm(runtime, params, config.max_grad_norm)  # the norm before clipping
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)  # free the gradients now: they would sit through the next rollout
                n_updates += 1
                for key, v in {
                    "policy_loss": loss.item(),
                    "entropy": masked_mean(entropy, mask[idx]).item(),
                    "grad_norm": grad_norm,
                    **pg_stats,
                    **is_stats,
                }.items():
                    stats[key] = stats.get(key, 0.0) + v
            scheduler.step()
            stats = {key: v / n_updates for key, v in stats.items()}
            stats["return"] = returns[:, 0].mean().item()  # the whole response's return: score - kl_coef * KL
            if k > 1:
                stats["group_reward_std"] = batch.scores.view(-1, k).std(1).mean().item()
                stats["zero_variance_group_share"] = online.zero_variance_groups(batch.scores, k).float().mean().item()
            else:  # no groups: one batch-wide baseline, so a batch of equal rewards carries no signal
                stats["reward_std"] = online.batch_reward_std(runtime, batch.scores)
            stats["masked_token_share"] = online.masked_token_share(batch.mask.sum().item(), mask)
            measured = runtime.mean_stats({**batch.stats, **stats})
            row = log.log(
                step, **{**measured, "lr": scheduler.get_last_lr()[0], "step_seconds": round(time.time() - t0, 3)}
            )
            alarm.check(step, measured)
            advance(**online.progress_metrics(row))
            if step % config.save_every == 0 or step == config.steps:
                last_ckpt = online.checkpoint_now(out, step, modules, optimizer, generator, prompts, runtime)
    return online.finish("reinforce-pp", config, policy, out, row, runtime=runtime, log=log)
