"""Critic-free online RL: GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024).

One iteration: take `batch_size` prompts, sample k responses each, score them, turn scores into
per-sequence advantages within each prompt's group, and update with the clipped ratio objective.
- GRPO: A = (r - group mean) / group std; KL to the reference is a separate loss term (k3 by default).
- RLOO: the KL penalty is folded into the sequence reward, r' = r - kl_coef * KL(seq); A = r' - mean of the other k-1.
The loss is the token-level mean over every response token of the batch.
Under torchrun / accelerate launch each process samples and scores its share of the prompts (whole groups, so
advantages stay exact) and gradients are averaged by DDP.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import online
from ..config import GRPOConfig, RLOOConfig, save_config
from ..console import progress_bar
from ..errors import ConfigError
from ..losses import group_advantages, kl_penalty, masked_mean, ppo_policy_loss, rloo_advantages
from ..runtime import start
from ..train import adamw, constant_schedule


def run(config: GRPOConfig | RLOOConfig) -> dict:
    is_grpo = isinstance(config, GRPOConfig)
    name = "grpo" if is_grpo else "rloo"
    k = config.group_size if is_grpo else config.k
    out = Path(config.output_dir)
    runtime = start(config)  # one process, or this process's place among N
    if config.mini_batch_size % runtime.world:
        raise ConfigError(
            f"mini_batch_size {config.mini_batch_size} must split evenly among the {runtime.world} processes"
        )
    reward_fn, gold, policy, prompts = online.setup(config)
    params = online.trainable(policy.model)
    optimizer = adamw(params, config.lr, weight_decay=0.01, eps=1e-5)  # AdamW's default decay, on every weight
    scheduler = constant_schedule(optimizer, config.warmup_steps)
    # every process draws the same prompts in the same order, and samples its own responses to its share
    generator = torch.Generator().manual_seed(config.seed + runtime.rank)
    modules = {"policy": policy.model}
    start_step, last_ckpt, _ = online.resume_state(config, out, modules, optimizer, generator, prompts, runtime)
    scheduler.last_epoch = start_step
    # gradients flow through the DDP wrapper; sampling uses the plain module (no collectives inside generation)
    trained = runtime.accelerator.prepare_model(policy.model) if runtime.world > 1 else policy.model
    if runtime.is_main:
        save_config(config, out)
    log = online.run_log(config, out, resume_step=start_step if last_ckpt else None, enabled=runtime.is_main)
    alarm = online.TruncationAlarm(config.max_new_tokens)
    row: dict = {}
    with progress_bar(name, config.steps) as advance:
        advance(start_step)
        for step in range(start_step + 1, config.steps + 1):
            t0 = time.time()
            # Each prompt k times in a row: consecutive rows form a group.
            indices = [i for i in runtime.shard(prompts.take(config.batch_size)) for _ in range(k)]
            batch = online.sample_batch(policy, prompts, indices, reward_fn, gold, config, generator)
            mask = batch.mask
            if is_grpo:
                advantages = group_advantages(batch.scores, k, normalize=config.normalize)
            else:
                seq_kl = (kl_penalty(batch.logps, batch.ref_logps, config.kl_estimator) * mask).sum(1)
                advantages = rloo_advantages(batch.scores - config.kl_coef * seq_kl, k)
            token_adv = advantages[:, None].expand_as(mask)
            input_ids, attention_mask = batch.rollout.full()
            prompt_len = batch.rollout.prompt_ids.shape[1]
            stats: dict[str, float] = {}
            n_updates = 0
            for idx in online.minibatches(
                len(indices), config.mini_batch_size // runtime.world, config.epochs_per_batch
            ):
                logps, entropy = policy.logps(
                    trained, input_ids[idx], attention_mask[idx], prompt_len, config.temperature, with_entropy=True
                )
                pg_loss, pg_stats = ppo_policy_loss(
                    logps, batch.logps[idx], token_adv[idx], mask[idx], config.clip_range
                )
                loss = pg_loss
                if is_grpo and config.kl_coef:
                    kl_term = masked_mean(kl_penalty(logps, batch.ref_logps[idx], config.kl_estimator), mask[idx])
                    loss = loss + config.kl_coef * kl_term
                    pg_stats["kl_loss"] = kl_term.item()
                online.guard(step, loss, batch.stats["kl"], config, last_ckpt)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)  # free the gradients now: they would sit through the next rollout
                n_updates += 1
                for key, v in {
                    "policy_loss": pg_loss.item(),
                    "entropy": masked_mean(entropy, mask[idx]).item(),
                    **pg_stats,
                }.items():
                    stats[key] = stats.get(key, 0.0) + v
            scheduler.step()
            stats = {key: v / n_updates for key, v in stats.items()}
            group_std = batch.scores.view(-1, k).std(1).mean().item()
            measured = runtime.mean_stats({**batch.stats, **stats, "group_reward_std": group_std})
            row = log.log(
                step, **{**measured, "lr": scheduler.get_last_lr()[0], "step_seconds": round(time.time() - t0, 3)}
            )
            alarm.check(step, row.get("truncated_share", 0.0))
            advance(
                reward=row["reward_avg"], **({"gold": row["gold_avg"]} if "gold_avg" in row else {}), kl=row["kl_avg"]
            )
            if step % config.save_every == 0 or step == config.steps:
                last_ckpt = online.checkpoint_now(out, step, modules, optimizer, generator, prompts, runtime)
    return online.finish(name, config, policy, out, row, runtime=runtime, log=log)
