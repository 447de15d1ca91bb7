"""Online DPO (Guo et al. 2024): DPO on pairs the current policy samples and a judge labels, every iteration.

One iteration: take `batch_size` prompts, sample two responses to each from the current policy (the rollout
engine), score both with the judge (`rewards`: a reward model, an AI judge or any `module:function` scorer, the
same reward sources as ppo and grpo; a gold callable for experiments), call the higher one chosen, and take a
DPO-family step (the offline stage's `preference_loss`: `loss_type` sigmoid / ipo / hinge / robust against the frozen
reference's log-probs of the same responses, with LoRA the adapter-disabled policy; simpo / orpo reference-free, on
per-token mean log-probs, ORPO with its NLL term on the chosen response). A pair the judge scores equal is a tie:
it stays out of the loss (weight 0) and its share is logged as `tie_share`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import online
from ..config import OnlineDPOConfig, save_config
from ..console import progress_bar
from ..errors import ConfigError
from ..losses import masked_mean
from ..runtime import clip_grad_norm, start
from .dpo import preference_loss


def label_pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen rows, rejected rows, labelled) of consecutive row pairs (0, 1), (2, 3), ...: the higher score is
    chosen; `labelled` is False for a tie (equal scores), which says nothing about which response is better."""
    if scores.dim() != 1 or scores.numel() % 2:
        raise ValueError(
            f"scores must be 1-D with an even length (two responses per prompt), got {tuple(scores.shape)}"
        )
    pairs = scores.view(-1, 2)
    second_wins = (pairs[:, 1] > pairs[:, 0]).long()
    first = torch.arange(len(pairs)) * 2
    return first + second_wins, first + 1 - second_wins, pairs[:, 0] != pairs[:, 1]


def pair_stats(scores, gold_scores, chosen, rejected, labelled, runtime) -> dict[str, float]:
    """The judge's view of this iteration's pairs, over every process: reward (judge score) of the chosen and the
    rejected response, their margin, the tie share, and with a gold judge how often gold agrees with the label."""
    w = labelled.double()
    sums = [
        float(len(labelled)),
        w.sum().item(),
        (scores[chosen] * w).sum().item(),
        (scores[rejected] * w).sum().item(),
    ]
    if gold_scores is not None:
        # gold ties count half: gold then has no preference either way
        agree = (gold_scores[chosen] > gold_scores[rejected]).double() + 0.5 * (
            gold_scores[chosen] == gold_scores[rejected]
        )
        sums += [
            (agree * w).sum().item(),
            (gold_scores[chosen] * w).sum().item(),
            (gold_scores[rejected] * w).sum().item(),
        ]
    sums = runtime.sum(sums)
    n_pairs, n_labelled = sums[0], sums[1]
    stats = {"tie_share": 1.0 - n_labelled / n_pairs}
    if n_labelled:
        stats |= {"reward_chosen": sums[2] / n_labelled, "reward_rejected": sums[3] / n_labelled}
        stats["reward_margin"] = stats["reward_chosen"] - stats["reward_rejected"]
        if gold_scores is not None:
            stats |= {"gold_agreement": sums[4] / n_labelled, "gold_chosen": sums[5] / n_labelled,
                      "gold_rejected": sums[6] / n_labelled}  # fmt: skip
    return stats


def run(config: OnlineDPOConfig) -> dict:
    out = Path(config.output_dir)
    runtime = start(config)  # one process, or this process's place among N (each samples its share of the prompts)
    if config.mini_batch_size % (2 * runtime.world):
        raise ConfigError(
            f"mini_batch_size {config.mini_batch_size} counts sequences, two per pair: it must split evenly into "
            f"pairs among the {runtime.world} process(es), i.e. be a multiple of {2 * runtime.world}"
        )
    reward_fn, gold, policy, prompts = online.setup(config)
    optimizer, scheduler, params, generator, modules, start_step, last_ckpt, _, trained = online.start_policy_training(
        config, runtime, policy, prompts
    )
    if runtime.is_main:
        save_config(config, out)
    log = online.run_log(config, out, resume_step=start_step if last_ckpt else None, enabled=runtime.is_main)
    alarm = online.SignalAlarm(config, enabled=runtime.is_main)
    pairs_per_step = config.mini_batch_size // 2 // runtime.world
    sft_coef = config.sft_coef or (1.0 if config.loss_type == "orpo" else 0.0)
    row: dict = {}
    with progress_bar(f"online-dpo ({config.loss_type})", config.steps) as advance:
        advance(start_step)
        for step in range(start_step + 1, config.steps + 1):
            t0 = time.time()
            # each prompt twice in a row: rows 2i and 2i+1 are prompt i's pair (its prompt is prefilled once)
            indices = [i for i in runtime.shard(prompts.take(config.batch_size)) for _ in range(2)]
            batch = online.sample_batch(policy, prompts, indices, reward_fn, gold, config, generator)
            chosen, rejected, labelled = label_pairs(batch.scores)
            judged = pair_stats(batch.scores, batch.gold_scores, chosen, rejected, labelled, runtime)
            ref_seq = (batch.ref_logps * batch.mask).sum(1)
            input_ids, attention_mask = batch.rollout.full()
            prompt_len = batch.rollout.prompt_ids.shape[1]
            # sums over the labelled pairs of every gradient step: loss, implicit accuracy, implicit rewards, count
            sums = torch.zeros(5, dtype=torch.float64)
            entropies, grad_norms = [], []
            mismatch: dict[str, float] = {}
            for idx in online.minibatches(len(chosen), pairs_per_step, config.epochs_per_batch):
                rows = torch.cat([chosen[idx], rejected[idx]])  # one forward for both sides
                logps, entropy = policy.logps(
                    trained, input_ids[rows], attention_mask[rows], prompt_len, config.temperature, with_entropy=True
                )
                seq, tokens = (logps * batch.mask[rows]).sum(1), batch.mask[rows].sum(1).clamp(min=1)
                n = len(idx)
                ref = torch.stack([ref_seq[chosen[idx]], ref_seq[rejected[idx]]], dim=1)
                losses, chosen_rewards, rejected_rewards = preference_loss(
                    config, seq[:n], seq[n:], tokens[:n], tokens[n:], ref
                )
                if sft_coef:  # ORPO's NLL term on the chosen response (per-token mean), as in offline dpo
                    losses = losses - sft_coef * seq[:n] / tokens[:n]
                weight = labelled[idx].to(losses.dtype)  # ties: weight 0, out of the step
                (total,) = runtime.sum([weight.sum().item()])
                # DDP averages gradients over processes, so each process scales its sum by world / total
                loss = (losses * weight).sum() * (runtime.world / max(total, 1.0))
                online.guard(step, loss, batch.stats["kl"], config, last_ckpt)
                entropies.append(masked_mean(entropy, batch.mask[rows]).item())
                if not grad_norms and not mismatch:
                    # bf16 rollouts: DPO's loss does not weigh tokens by the sampler, so the mismatch is only logged,
                    # measured before the first step of the iteration (the policy as it sampled)
                    mismatch = online.correction_weights(config, batch, rows, logps, batch.mask[rows])[2]
                if total == 0:  # every pair of this step tied, on every process: nothing to learn from
                    continue
                loss.backward()
                grad_norms.append(clip_grad_norm(runtime, params, config.max_grad_norm))  # the norm before clipping
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)  # free the gradients now: they would sit through the next rollout
                with torch.no_grad():
                    sums += torch.stack([
                        (losses * weight).sum(), ((chosen_rewards > rejected_rewards).to(weight.dtype) * weight).sum(),
                        (chosen_rewards * weight).sum(), (rejected_rewards * weight).sum(), weight.sum(),
                    ]).double()  # fmt: skip
            scheduler.step()
            loss_sum, accuracy_sum, chosen_sum, rejected_sum, count = runtime.sum(sums.tolist())
            entropy = sum(entropies) / len(entropies)
            # with no labelled pair (every one tied) no step was taken: the update is zero
            stats = {"grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else 0.0}
            if count:  # with no labelled pair there is no DPO step to describe
                stats |= {
                    "dpo_loss": loss_sum / count,
                    "implicit_reward_accuracy": accuracy_sum / count,
                    "implicit_reward_chosen": chosen_sum / count,
                    "implicit_reward_rejected": rejected_sum / count,
                    "implicit_reward_margin": (chosen_sum - rejected_sum) / count,
                }
            measured = {**runtime.mean_stats({**batch.stats, **mismatch, "entropy": entropy}), **judged, **stats}
            row = log.log(
                step, **{**measured, "lr": scheduler.get_last_lr()[0], "step_seconds": round(time.time() - t0, 3)}
            )
            alarm.check(step, measured)
            advance(**online.progress_metrics(row))
            if step % config.save_every == 0 or step == config.steps:
                last_ckpt = online.checkpoint_now(out, step, modules, optimizer, generator, prompts, runtime)
    return online.finish("online-dpo", config, policy, out, row, runtime=runtime, log=log)
