"""PPO with a value head, GAE and a per-token KL penalty folded into the reward (Ziegler et al. 2019; Ouyang et al.
2022).

One iteration: sample a batch of responses -> score them -> per-token rewards = -kl_coef * KL, plus the
score on the last token -> GAE advantages -> several epochs of clipped policy and value updates.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .. import online
from ..config import PPOConfig, save_config
from ..console import progress_bar
from ..errors import ConfigError
from ..losses import entropy_from_logits, gae, kl_penalty, masked_mean, ppo_policy_loss, ppo_value_loss, whiten
from ..resolve import resolve_model_path
from ..runtime import clip_grad_norm, start
from ..train import adamw, constant_schedule


class ValueModel(nn.Module):
    """V(s_t) for every response position: a scalar head on a separate backbone copy or on the policy's hidden
    states."""

    def __init__(self, config: PPOConfig, policy: online.Policy):
        super().__init__()
        self.shared = config.value_model == "shared"
        if self.shared:
            hidden = policy.model.config.get_text_config().hidden_size
        else:
            from transformers import AutoModel

            path = resolve_model_path(config.value_init) if config.value_init else policy.path
            # The bare backbone (AutoModel) exists for every architecture, unlike *ForTokenClassification (OPT has
            # none).
            self.backbone = AutoModel.from_pretrained(str(path))
            self.backbone.eval()  # dropout off
            hidden = self.backbone.config.get_text_config().hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(
        self, policy: online.Policy, input_ids, attention_mask, prompt_len: int, temperature: float, with_policy: bool
    ):
        """(policy log-probs, entropies, values) over the response positions; one backbone pass when shared."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        if not self.shared:
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            ).last_hidden_state
            values = self.head(hidden[:, prompt_len - 1 : -1]).squeeze(-1)
            if not with_policy:
                return None, None, values.float()
            logps, entropy = policy.logps(
                policy.model, input_ids, attention_mask, prompt_len, temperature, with_entropy=True
            )
            return logps, entropy, values.float()
        out = policy.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True
        )
        values = self.head(out.hidden_states[-1][:, prompt_len - 1 : -1]).squeeze(-1).float()
        if not with_policy:
            return None, None, values
        logits = out.logits[:, prompt_len - 1 : -1].float() / temperature
        logps = torch.log_softmax(logits, -1).gather(-1, input_ids[:, prompt_len:, None]).squeeze(-1)
        return logps, entropy_from_logits(logits), values


class ActorCritic(nn.Module):
    """Policy and value model as one module, so that one DDP wrapper averages the gradients of both."""

    def __init__(self, policy: online.Policy, value: ValueModel):
        super().__init__()
        self.policy_model, self.value = policy.model, value
        self._policy = policy

    def forward(self, input_ids, attention_mask, prompt_len: int, temperature: float):
        return self.value(self._policy, input_ids, attention_mask, prompt_len, temperature, with_policy=True)


class AdaptiveKL:
    """kl_coef <- kl_coef * (1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon) (Ziegler et al. 2019)."""

    def __init__(self, coef: float, target: float, horizon: int):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n: int) -> None:
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.coef *= 1 + error * n / self.horizon


def run(config: PPOConfig) -> dict:
    out = Path(config.output_dir)
    runtime = start(config)  # one process, or this process's place among N (each samples its share of the prompts)
    if config.mini_batch_size % runtime.world:
        raise ConfigError(
            f"mini_batch_size {config.mini_batch_size} must split evenly among the {runtime.world} processes"
        )
    reward_fn, gold, policy, prompts = online.setup(config)
    value = ValueModel(config, policy)
    trainable = lambda: online.trainable(policy.model) + online.trainable(value)  # noqa: E731
    optimizer = adamw(trainable(), config.lr, weight_decay=0.01, eps=1e-5)  # AdamW's default decay, on every weight
    online.shard(runtime, policy, optimizer, value)  # fsdp=true under torchrun: policy, reference, value sharded
    params = trainable()
    scheduler = constant_schedule(optimizer, config.warmup_steps)
    kl_ctl = AdaptiveKL(config.kl_coef, config.target_kl, config.kl_horizon)
    actor_critic = ActorCritic(policy, value)
    # a sharded checkpoint holds one model and its optimiser: under FSDP the two as one module
    modules = {"actor_critic": actor_critic} if runtime.fsdp else {"policy": policy.model, "value": value}
    generator = torch.Generator().manual_seed(config.seed + runtime.rank)
    start_step, last_ckpt, state = online.resume_state(config, out, modules, optimizer, generator, prompts, runtime)
    scheduler.last_epoch = start_step
    kl_ctl.coef = state.get("kl_coef", kl_ctl.coef)
    # gradients flow through the DDP wrapper (FSDP2 reduce-scatters them itself); sampling and the rollout values
    # use the plain modules
    trained = actor_critic if runtime.fsdp or runtime.world == 1 else runtime.accelerator.prepare_model(actor_critic)
    if runtime.is_main:
        save_config(config, out)
    log = online.run_log(config, out, resume_step=start_step if last_ckpt else None, enabled=runtime.is_main)
    alarm = online.SignalAlarm(config, enabled=runtime.is_main)
    row: dict = {}
    with progress_bar("ppo", config.steps) as advance:
        advance(start_step)
        for step in range(start_step + 1, config.steps + 1):
            t0 = time.time()
            batch = online.sample_batch(
                policy, prompts, runtime.shard(prompts.take(config.batch_size)), reward_fn, gold, config, generator
            )
            input_ids, attention_mask = batch.rollout.full()
            prompt_len = batch.rollout.prompt_ids.shape[1]
            mask = batch.mask
            with torch.no_grad():
                _, _, old_values = value(
                    policy, input_ids, attention_mask, prompt_len, config.temperature, with_policy=False
                )
            # Reward shaping: scaled (optionally whitened) score on the last response token, minus kl_coef *
            # per-token KL.
            scores = batch.scores * config.reward_scale
            if config.whiten_rewards:
                scores = whiten(scores, shift_mean=False)
            token_kl = kl_penalty(batch.logps, batch.ref_logps, config.kl_estimator) * mask
            rewards = -kl_ctl.coef * token_kl
            last = (mask.sum(1) - 1).clamp(min=0).long()
            rewards[torch.arange(len(last)), last] += scores
            advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
            if config.whiten_advantages:
                advantages = whiten(advantages, mask)
            stats: dict[str, float] = {}
            n_updates = 0
            size = config.mini_batch_size // runtime.world
            online.add_trainer_logps(policy, batch, config, size)  # bf16 rollouts with several steps: fp32 old logps
            for idx in online.minibatches(len(last), size, config.epochs_per_batch):
                logps, entropy, values = trained(input_ids[idx], attention_mask[idx], prompt_len, config.temperature)
                # bf16 rollouts: the ratio against the fp32 policy, and token weights for the sampler's mismatch
                old_logps, is_weights, is_stats = online.correction_weights(config, batch, idx, logps, mask[idx])
                pg_loss, pg_stats = ppo_policy_loss(
                    logps, old_logps, advantages[idx], mask[idx], config.clip_range, weights=is_weights
                )
                vf_loss, vf_stats = ppo_value_loss(
                    values, old_values[idx], returns[idx], mask[idx], config.value_clip_range
                )
                ent = masked_mean(entropy, mask[idx])
                loss = pg_loss + config.vf_coef * vf_loss - config.entropy_coef * ent
                online.guard(step, loss, batch.stats["kl"], config, last_ckpt)
                loss.backward()
                grad_norm = clip_grad_norm(runtime, params, config.max_grad_norm)  # the norm before clipping
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)  # free the gradients now: they would sit through the next rollout
                n_updates += 1
                for k, v in {
                    "policy_loss": pg_loss.item(),
                    "value_loss": vf_loss.item(),
                    "entropy": ent.item(),
                    "grad_norm": grad_norm,
                    **pg_stats,
                    **vf_stats,
                    **is_stats,
                }.items():
                    stats[k] = stats.get(k, 0.0) + v
            scheduler.step()
            stats = {k: v / n_updates for k, v in stats.items()}
            # PPO has no groups: its zero-variance signal is the spread of the whole batch's rewards (every process)
            signal = {
                "reward_std": online.batch_reward_std(runtime, batch.scores),
                "masked_token_share": online.masked_token_share(batch.mask.sum().item(), mask),
            }
            measured = runtime.mean_stats({**batch.stats, **stats, **signal})
            if config.adaptive_kl:  # on the mean over every process, so each keeps the same coefficient
                kl_ctl.update(measured["kl"], config.batch_size)
            row = log.log(
                step,
                **{
                    **measured,
                    "kl_coef": kl_ctl.coef,
                    "lr": scheduler.get_last_lr()[0],
                    "step_seconds": round(time.time() - t0, 3),
                },
            )
            alarm.check(step, measured)
            advance(**online.progress_metrics(row))
            if step % config.save_every == 0 or step == config.steps:
                last_ckpt = online.checkpoint_now(
                    out, step, modules, optimizer, generator, prompts, runtime, kl_coef=kl_ctl.coef
                )
    value_state = runtime.full_state(value)  # every process: under FSDP the value model's shards gathered
    if runtime.is_main:
        plain_value = runtime.plain_model(value, value_state)
        if not value.shared:
            plain_value.backbone.save_pretrained(str(out / "value_model"))
        torch.save(plain_value.head.state_dict(), out / "value_head.pt")
    return online.finish("ppo", config, policy, out, row, runtime=runtime, log=log)
