"""Critic-free online RL: GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024).

One iteration: take `batch_size` prompts, sample k responses each, score them, turn scores into
per-sequence advantages within each prompt's group, and update with the clipped ratio objective.
- GRPO: A = (r - group mean) / group std; KL to the reference is a separate loss term (k3 by default).
- RLOO: the KL penalty is folded into the sequence reward, r' = r - kl_coef * KL(seq); A = r' - mean of the other k-1.
The policy loss is `losses.grpo_policy_loss` with `loss_type` dapo (the token mean over the batch, the default),
grpo (per-sequence mean), dr_grpo (a constant n * max_new_tokens normaliser) or gspo (a sequence-level ratio), and
`clip_low`/`clip_high` (clip-higher). DAPO's overlong shaping: `overlong_buffer` lowers the score of responses near
max_new_tokens, `mask_truncated` drops the responses cut there from the loss.
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
from ..losses import group_advantages, grpo_policy_loss, kl_penalty, masked_mean, rloo_advantages
from ..runtime import clip_grad_norm, start


def overlong_punishment(lengths: torch.Tensor, config: GRPOConfig | RLOOConfig) -> torch.Tensor:
    """DAPO's soft overlong punishment per response: 0 up to max_new_tokens - overlong_buffer tokens, then rising
    linearly to overlong_penalty at max_new_tokens."""
    if config.overlong_buffer is None:
        return torch.zeros_like(lengths)
    over = (lengths - (config.max_new_tokens - config.overlong_buffer)).clamp(min=0)
    return config.overlong_penalty * over / config.overlong_buffer


def sample_groups(policy, prompts, reward_fn, gold, config, generator, runtime, k: int):
    """This process's groups of one iteration and the sampling stats (`sampled_tokens`: the response tokens of
    every round, dropped groups included). With dynamic_sampling, groups whose rewards
    are all equal (zero advantage: no gradient) are dropped and more prompts sampled, every process in step, until
    each has its share of informative groups or max_sampling_rounds is reached; equal groups then fill the rest,
    so every process trains on the same number of rows."""
    informative, spare, first = [], [], None
    sampled_tokens = 0.0  # every round's response tokens, for masked_token_share
    want = len(runtime.shard(list(range(config.batch_size))))
    for round_ in range(1, config.max_sampling_rounds + 1):
        # Each prompt k times in a row: consecutive rows form a group.
        indices = [i for i in runtime.shard(prompts.take(config.batch_size)) for _ in range(k)]
        batch = online.sample_batch(policy, prompts, indices, reward_fn, gold, config, generator)
        sampled_tokens += batch.mask.sum().item()
        if first is None:
            first = batch
        if not config.dynamic_sampling:
            return batch, {"sampled_tokens": sampled_tokens}
        varied = ~online.zero_variance_groups(batch.scores, k)
        for group, keep in enumerate(varied.tolist()):
            (informative if keep else spare).append((batch, group))
        if round_ == 1:
            share = varied.float().mean().item()
        # every process samples as many rounds as the neediest one, so prompt positions stay in step
        (short,) = runtime.sum([float(len(informative) < want)])
        if not short:
            break
    chosen = (informative + spare)[:want]
    parts = [b.select([g * k + j for j in range(k)]) for b, g in chosen]
    stats = {"informative_group_share": share, "sampling_rounds": round_, "sampled_tokens": sampled_tokens}
    batch = online.concat_batches(parts, policy.tokenizer.pad_token_id)
    batch.stats = first.stats  # what the policy sampled, before filtering
    return batch, stats


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
    optimizer, scheduler, params, generator, modules, start_step, last_ckpt, _, trained = online.start_policy_training(
        config, runtime, policy, prompts
    )
    if runtime.is_main:
        save_config(config, out)
    log = online.run_log(config, out, resume_step=start_step if last_ckpt else None, enabled=runtime.is_main)
    alarm = online.SignalAlarm(config, "group_size" if is_grpo else "k", runtime.is_main, zero_loss_note=True)
    row: dict = {}
    with progress_bar(name, config.steps) as advance:
        advance(start_step)
        for step in range(start_step + 1, config.steps + 1):
            t0 = time.time()
            batch, sampling = sample_groups(policy, prompts, reward_fn, gold, config, generator, runtime, k)
            sampled_tokens = sampling.pop("sampled_tokens")
            indices = list(range(len(batch.scores)))
            mask = batch.mask
            scores = batch.scores - overlong_punishment(mask.sum(1), config)
            if is_grpo:
                advantages = group_advantages(scores, k, normalize=config.normalize)
            else:
                seq_kl = (kl_penalty(batch.logps, batch.ref_logps, config.kl_estimator) * mask).sum(1)
                advantages = rloo_advantages(scores - config.kl_coef * seq_kl, k)
            if config.mask_truncated:
                # DAPO overlong filtering: a cut-off response says nothing about its ending, so it gets no gradient
                mask = mask * (~batch.rollout.truncated).to(mask.dtype)[:, None]
            token_adv = advantages[:, None].expand_as(mask)
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
                pg_loss, pg_stats = grpo_policy_loss(
                    logps,
                    old_logps,
                    token_adv[idx],
                    mask[idx],
                    loss_type=config.loss_type,
                    clip_low=config.clip_low,
                    clip_high=config.clip_high,
                    max_tokens=config.max_new_tokens,
                    weights=is_weights,
                )
                loss = pg_loss
                if is_grpo and config.kl_coef:
                    kl_term = masked_mean(kl_penalty(logps, batch.ref_logps[idx], config.kl_estimator), mask[idx])
                    loss = loss + config.kl_coef * kl_term
                    pg_stats["kl_loss"] = kl_term.item()
                online.guard(step, loss, batch.stats["kl"], config, last_ckpt)
                loss.backward()
                grad_norm = clip_grad_norm(runtime, params, config.max_grad_norm)  # the norm before clipping
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)  # free the gradients now: they would sit through the next rollout
                n_updates += 1
                for key, v in {
                    "policy_loss": pg_loss.item(),
                    "entropy": masked_mean(entropy, mask[idx]).item(),
                    "grad_norm": grad_norm,
                    **pg_stats,
                    **is_stats,
                }.items():
                    stats[key] = stats.get(key, 0.0) + v
            scheduler.step()
            stats = {key: v / n_updates for key, v in stats.items()}
            group_std = batch.scores.view(-1, k).std(1).mean().item()
            signal = {
                "group_reward_std": group_std,
                # the groups the update saw (after dynamic sampling), on the scores the advantages came from
                "zero_variance_group_share": online.zero_variance_groups(scores, k).float().mean().item(),
                "masked_token_share": online.masked_token_share(sampled_tokens, mask),
            }
            measured = runtime.mean_stats({**batch.stats, **stats, **sampling, **signal})
            row = log.log(
                step, **{**measured, "lr": scheduler.get_last_lr()[0], "step_seconds": round(time.time() - t0, 3)}
            )
            alarm.check(step, measured)
            advance(**online.progress_metrics(row), zero_var=row["zero_variance_group_share"])
            if step % config.save_every == 0 or step == config.steps:
                last_ckpt = online.checkpoint_now(out, step, modules, optimizer, generator, prompts, runtime)
    return online.finish(name, config, policy, out, row, runtime=runtime, log=log)
