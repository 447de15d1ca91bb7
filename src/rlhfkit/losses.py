"""Pure tensor loss functions for reward modelling and preference optimisation.

Everything here depends on torch only: inputs are tensors, outputs are tensors,
and nothing reaches into the rest of rlhfkit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "bradley_terry_loss",
    "reward_centering_loss",
    "dpo_loss",
    "kto_loss",
    "simpo_loss",
    "orpo_loss",
    "sequence_logps",
    "masked_mean",
    "ensemble_reward",
    "DPO_LOSS_TYPES",
    "ENSEMBLE_METHODS",
]

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")

_LN2 = math.log(2.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is non-zero (0 where the mask is empty)."""
    # Masked-out entries are zeroed with where() first so a NaN/inf there cannot leak via 0 * nan.
    mask = mask.to(values.dtype)
    values = torch.where(mask != 0, values, torch.zeros((), dtype=values.dtype, device=values.device))
    num = (values * mask).sum() if dim is None else (values * mask).sum(dim=dim)
    den = mask.sum() if dim is None else mask.sum(dim=dim)
    # Denominator floored at the dtype's smallest normal so an all-zero mask gives 0, not NaN.
    return num / den.clamp_min(torch.finfo(values.dtype).tiny)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin=None) -> torch.Tensor:
    """Bradley-Terry pairwise reward-model loss: mean of -logsigmoid(r_c - r_r - margin)."""
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        # margin may be a Python float or a tensor broadcastable to the batch (per-example margins).
        diff = diff - torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
    # logsigmoid is evaluated in its stable form (no explicit log(sigmoid(x))).
    return -F.logsigmoid(diff).mean()


def multi_head_bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Bradley-Terry per head on the (pair, head) entries that carry a label, summed (the caller divides by the
    number of labelled entries). Shapes [batch, heads]; `labels` is +1 where the chosen response wins for that head,
    -1 where the rejected one does, 0 where the pair has no label for it (or a tie): an unlabelled entry adds
    exactly zero to the loss and zero gradient to its head."""
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.shape != labels.shape:
        raise ValueError(
            f"chosen {tuple(chosen_rewards.shape)}, rejected {tuple(rejected_rewards.shape)} and labels "
            f"{tuple(labels.shape)} must have one shape [batch, heads]"
        )
    sign = labels.to(chosen_rewards.dtype)
    # -logsigmoid(sign * (r_c - r_r)) where labelled; torch.where (not a product with 0) keeps the masked gradient 0
    per_entry = -F.logsigmoid(sign * (chosen_rewards - rejected_rewards))
    return torch.where(labels != 0, per_entry, torch.zeros_like(per_entry)).sum()


def reward_centering_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Reward-centering auxiliary term (Eisenstein et al. 2023): mean of (r_c + r_r)**2."""
    # Returned unscaled; the caller multiplies by its centering coefficient.
    return ((chosen_rewards + rejected_rewards) ** 2).mean()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO-family per-example losses plus detached implicit rewards, each of shape [batch]."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must satisfy 0 <= label_smoothing < 0.5, got {label_smoothing!r}")
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(DPO_LOSS_TYPES)}")

    # logits = (policy log-ratio) - (reference log-ratio); reference terms carry no gradient by construction.
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    ls = label_smoothing

    if loss_type == "sigmoid":
        # cDPO: a label flipped with probability ls; ls = 0 is plain DPO.
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    elif loss_type == "ipo":
        # IPO regresses the (unscaled) logits onto the target 1/(2*beta).
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        # SLiC hinge on the beta-scaled logits.
        losses = F.relu(1 - beta * logits)
    else:  # robust
        # Chowdhury et al. 2024: unbiased under label-flip rate ls; the 1/(1-2ls) factor is why ls < 0.5.
        losses = (-F.logsigmoid(beta * logits) * (1 - ls) + F.logsigmoid(-beta * logits) * ls) / (1 - 2 * ls)

    # Implicit rewards are detached: they are for logging/metrics, never for the gradient.
    chosen_rewards = (beta * (policy_chosen_logps - ref_chosen_logps)).detach()
    rejected_rewards = (beta * (policy_rejected_logps - ref_rejected_logps)).detach()
    return losses, chosen_rewards, rejected_rewards


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_estimate: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO per-example losses (Ethayarajh et al. 2024), shape [batch]; `desirable` marks thumbs-up examples."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    if not (desirable_weight > 0 and undesirable_weight > 0):
        raise ValueError(f"weights must be > 0, got {desirable_weight!r} and {undesirable_weight!r}")
    _check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps, desirable=desirable)
    logratio = policy_logps - ref_logps
    # z = max(KL, 0) is a reference point, not a target: no gradient flows through it.
    z = torch.as_tensor(kl_estimate, dtype=logratio.dtype, device=logratio.device).detach().clamp(min=0)
    # desirable: w_d * (1 - sigmoid(beta * (logratio - z))); undesirable: w_u * (1 - sigmoid(beta * (z - logratio))).
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratio - z)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z - logratio)))
    return torch.where(desirable.bool(), desirable_losses, undesirable_losses)


def simpo_loss(
    chosen_logps_avg: torch.Tensor,
    rejected_logps_avg: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO per-example losses -logsigmoid(beta*(c - r) - gamma) plus detached rewards beta*logps_avg."""
    # gamma is the absolute target margin (as in the SimPO paper), not the gamma/beta ratio some codebases use.
    losses = -F.logsigmoid(beta * (chosen_logps_avg - rejected_logps_avg) - gamma)
    chosen_rewards = (beta * chosen_logps_avg).detach()
    rejected_rewards = (beta * rejected_logps_avg).detach()
    return losses, chosen_rewards, rejected_rewards


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """Numerically safe log(1 - exp(x)) for x < 0."""
    # Maechler (2012): log(-expm1(x)) for x > -ln2, log1p(-exp(x)) below; each branch sees a clamped
    # input so the branch torch.where discards cannot produce inf/NaN gradients.
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = torch.log(-torch.expm1(x.clamp(min=-_LN2)))
    far = torch.log1p(-torch.exp(x.clamp(max=-_LN2)))
    return torch.where(x > -_LN2, near_zero, far)


def orpo_loss(
    chosen_logps_avg: torch.Tensor,
    rejected_logps_avg: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO odds-ratio term -beta*logsigmoid(log_odds) per example (the caller adds the NLL term)."""
    # log odds(p) = log p - log(1 - p), with log(1 - p) from a stable log1mexp of the average logp.
    log_odds = (chosen_logps_avg - rejected_logps_avg) - (_log1mexp(chosen_logps_avg) - _log1mexp(rejected_logps_avg))
    losses = -beta * F.logsigmoid(log_odds)
    chosen_rewards = (beta * chosen_logps_avg).detach()
    rejected_rewards = (beta * rejected_logps_avg).detach()
    return losses, chosen_rewards, rejected_rewards


ENSEMBLE_METHODS = ("mean", "min", "uwo")


def ensemble_reward(rewards: torch.Tensor, method: str = "mean", coef: float = 0.0) -> torch.Tensor:
    """One reward per response, shape [n], from the [K, n] rewards of K reward models (Coste et al., ICLR 2024)."""
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"unknown ensemble method {method!r}; expected one of {', '.join(ENSEMBLE_METHODS)}")
    if rewards.dim() != 2 or rewards.shape[0] < 1:
        raise ValueError(f"rewards must be [K, n] with K >= 1 members, got shape {tuple(rewards.shape)}")
    if not coef >= 0:
        raise ValueError(f"coef must be >= 0, got {coef!r}")
    if method == "mean":
        return rewards.mean(dim=0)
    if method == "min":
        # worst-case optimisation: the most pessimistic member of each response
        return rewards.min(dim=0).values
    # uncertainty-weighted optimisation: mean - coef * variance over members, the population variance (divide by K)
    return rewards.mean(dim=0) - coef * rewards.var(dim=0, unbiased=False)


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of label log-probs over masked positions, and the masked-token count."""
    if logits.shape[:-1] != labels.shape or labels.shape != loss_mask.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
            f"loss_mask {tuple(loss_mask.shape)}; expected [B, T, V], [B, T], [B, T]"
        )
    mask = loss_mask.bool()
    # Unmasked labels (e.g. -100) are replaced by index 0 before gather; masked labels are left
    # untouched so a genuinely out-of-range target still fails loudly.
    safe_labels = labels.masked_fill(~mask, 0).long()

    if logits.dtype in (torch.float32, torch.float64):
        # log p(label) = logit[label] - logsumexp(logits): no [B, T, V] log_softmax copy is kept.
        picked = torch.gather(logits, -1, safe_labels.unsqueeze(-1)).squeeze(-1)
        token_logps = picked - torch.logsumexp(logits, dim=-1)
    else:
        # Low-precision logits: upcast one sequence at a time so only a [T, V] float32 copy exists.
        rows = []
        for row_logits, row_labels in zip(logits, safe_labels):
            row_logits = row_logits.float()
            picked = torch.gather(row_logits, -1, row_labels.unsqueeze(-1)).squeeze(-1)
            rows.append(picked - torch.logsumexp(row_logits, dim=-1))
        token_logps = torch.stack(rows)

    zero = torch.zeros((), dtype=token_logps.dtype, device=token_logps.device)
    sum_logps = torch.where(mask, token_logps, zero).sum(dim=-1)
    token_counts = mask.sum(dim=-1).to(token_logps.dtype)
    return sum_logps, token_counts


# ------------------------------------------------------------------ RL (PPO / GRPO / RLOO) helpers

__all__ += [
    "gae",
    "kl_penalty",
    "KL_ESTIMATORS",
    "ppo_policy_loss",
    "grpo_policy_loss",
    "GRPO_LOSS_TYPES",
    "ppo_value_loss",
    "group_advantages",
    "rloo_advantages",
    "reinforce_pp_advantages",
    "whiten",
    "entropy_from_logits",
]

KL_ESTIMATORS = ("k1", "k2", "k3")


def _masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` with masked-out positions replaced by exact zeros (so garbage there cannot leak)."""
    # where() rather than values * mask: 0 * inf / 0 * nan would otherwise poison results and gradients.
    return torch.where(mask != 0, values, torch.zeros((), dtype=values.dtype, device=values.device))


def _check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ValueError unless every named tensor has the same shape."""
    shapes = {name: tuple(x.shape) for name, x in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("shape mismatch: " + ", ".join(f"{n} {s}" for n, s in shapes.items()))


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the masked tokens of each [B, T] row; returns (advantages, returns)."""
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    keep = mask != 0
    # Inputs are detached and masked positions zeroed, so garbage there never enters the recursion.
    rewards = _masked(rewards.detach().to(dtype), keep)
    values = _masked(values.detach().to(dtype), keep)
    batch, steps = rewards.shape
    # Bootstrap with 0 after the last masked token of every row (episode ends with the response).
    next_value = rewards.new_zeros(batch)
    next_adv = rewards.new_zeros(batch)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(steps)):
        # delta_t = r_t + gamma * V_{t+1} - V_t, where "t+1" is the next *masked* token of the row.
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        # Unmasked positions (prompt prefix, right padding, any hole) are skipped: the carry passes through.
        advantages[:, t] = torch.where(keep[:, t], adv, advantages.new_zeros(()))
        next_value = torch.where(keep[:, t], values[:, t], next_value)
        next_adv = torch.where(keep[:, t], adv, next_adv)
    # returns = A + V on masked tokens; both are already 0 elsewhere.
    returns = advantages + values
    return advantages, returns


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Element-wise KL(policy || ref) estimate from sampled-token logps (Schulman's k1 / k2 / k3)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}")
    log_ratio = logps - ref_logps
    if estimator == "k1":
        # k1: unbiased, can be negative per token.
        return log_ratio
    if estimator == "k2":
        # k2: 0.5 * log_ratio**2, low variance, biased.
        return 0.5 * log_ratio**2
    # k3: exp(-x) - (-x) - 1 with x = logp - ref, written with expm1 so tiny x does not cancel; always >= 0.
    neg = -log_ratio
    return torch.expm1(neg) - neg


def truncated_importance_weights(
    trainer_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, cap: float = 2.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level truncated importance sampling between the model that sampled the responses (a bf16 copy of the
    policy) and the policy the update differentiates (fp32): w = min(exp(trainer - sampler), cap), detached, 0 at
    masked positions (TRL's vllm_importance_sampling_correction, verl's rollout_corr token mode). Multiplied into
    the policy-gradient term, it turns the sampler's expectation into the trainer's; the cap bounds the variance.
    Stats over unmasked tokens: is_logratio_mean and is_logratio_max of |trainer - sampler|, and is_clipped_share,
    the share of tokens whose weight the cap cut."""
    _check_same_shape(trainer_logps=trainer_logps, sampler_logps=sampler_logps, mask=mask)
    if not cap >= 1.0:
        raise ValueError(f"cap must be >= 1 (weights above it are cut to it), got {cap!r}")
    keep = mask != 0
    with torch.no_grad():
        # Zeroed at masked positions before exp, as in grpo_policy_loss: padding cannot overflow.
        log_ratio = _masked(trainer_logps.detach().double() - sampler_logps.detach().double(), keep)
        raw = torch.exp(log_ratio)
        weights = _masked(torch.clamp(raw, max=cap), keep).to(trainer_logps.dtype)
        gap = log_ratio.abs()
        stats = {
            "is_logratio_mean": masked_mean(gap, mask).item(),
            "is_logratio_max": gap[keep].max().item() if bool(keep.any()) else 0.0,
            "is_clipped_share": masked_mean((raw > cap).double(), mask).item(),
        }
    return weights, stats


def ppo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate loss (token-level masked mean) plus float stats clip_fraction/approx_kl/ratio_mean;
    `weights` as in grpo_policy_loss."""
    # The token-level mean over the batch is exactly DAPO's normaliser with a symmetric clip.
    return grpo_policy_loss(logps, old_logps, advantages, mask, loss_type="dapo", clip_low=clip_range, weights=weights)


GRPO_LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "gspo")


def grpo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "grpo",
    clip_low: float = 0.2,
    clip_high: float | None = None,
    max_tokens: int | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-ratio policy loss of the GRPO family over [n, T] tensors, plus float stats
    clip_fraction/approx_kl/ratio_mean. `clip_high=None` is `clip_low`; `max_tokens` is dr_grpo's length budget.
    `weights` ([n, T], detached; None: all 1) multiply each token's clipped term: the importance weights of
    `truncated_importance_weights` when the responses were sampled by another model (a bf16 copy); gspo, whose term
    is per sequence, takes each sequence's mean weight."""
    _check_same_shape(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask)
    if weights is not None:
        _check_same_shape(logps=logps, weights=weights)
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(GRPO_LOSS_TYPES)}")
    clip_high = clip_low if clip_high is None else clip_high
    if not (clip_low > 0 and clip_high > 0):
        raise ValueError(f"clip_low and clip_high must be > 0, got {clip_low!r} and {clip_high!r}")
    if loss_type == "dr_grpo" and not (max_tokens and max_tokens > 0):
        raise ValueError(f"loss_type 'dr_grpo' needs max_tokens > 0 (the completion-length budget), got {max_tokens!r}")
    keep = mask != 0
    # The log-ratio is zeroed at masked positions *before* exp so garbage cannot overflow into NaN gradients.
    log_ratio = _masked(logps - old_logps, keep)
    advantages = _masked(advantages.detach(), keep)
    if loss_type == "gspo":
        # GSPO (Zheng et al. 2025): one ratio per sequence, exp of the mean token log-ratio; A is the sequence's.
        seq_log_ratio = masked_mean(log_ratio, mask, dim=1)
        ratio = torch.exp(seq_log_ratio)
        advantages = masked_mean(advantages, mask, dim=1)
    else:
        ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    # Pessimistic bound: the larger (worse) of the two losses, per token (per sequence for gspo).
    term = torch.maximum(unclipped, clipped)
    if weights is not None:
        weights = _masked(weights.detach(), keep)
        term = term * (masked_mean(weights, mask, dim=1) if loss_type == "gspo" else weights)
    if loss_type == "grpo":
        # GRPO paper: mean over each sequence's tokens, then over sequences (long answers weigh less per token).
        loss = masked_mean(term, mask, dim=1).mean()
    elif loss_type == "dapo":
        # DAPO: sum over every token of the batch / number of tokens (each token weighs the same).
        loss = masked_mean(term, mask)
    elif loss_type == "dr_grpo":
        # Dr. GRPO: a constant normaliser n * max_tokens, so no length bias from the denominator.
        loss = _masked(term, keep).sum() / (term.shape[0] * max_tokens)
    else:  # gspo
        loss = term.mean()
    with torch.no_grad():
        # Clipped when the clipped branch strictly wins, i.e. the ratio left [1 - clip_low, 1 + clip_high].
        outside = ((ratio - 1.0) < -clip_low) | ((ratio - 1.0) > clip_high)
        clip_active = (outside & (clipped > unclipped)).to(ratio.dtype)
        stats = {
            "clip_fraction": clip_active.mean().item()
            if loss_type == "gspo"
            else masked_mean(clip_active, mask).item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
            "ratio_mean": ratio.mean().item() if loss_type == "gspo" else masked_mean(ratio, mask).item(),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss 0.5 * masked mean of max((V-R)^2, (clip(V, V_old±eps)-R)^2) plus value_clip_fraction."""
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    keep = mask != 0
    # Every input is zeroed at masked positions so huge garbage cannot overflow the squares or gradients.
    values = _masked(values, keep)
    old_values = _masked(old_values.detach(), keep)
    returns = _masked(returns.detach(), keep)
    # clip(V, V_old - eps, V_old + eps) written as V_old + clamp(V - V_old) so the gradient flows inside the band.
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        # Clip fraction: share of masked tokens where the clipped branch strictly dominates.
        frac = masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask).item()
    return loss, {"value_clip_fraction": frac}


def group_advantages(rewards: torch.Tensor, group_size: int, normalize: bool = True) -> torch.Tensor:
    """GRPO advantages for consecutive groups: r - group mean, optionally / (group std + 1e-4); shape [n]."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [n], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) must be a multiple of group_size ({group_size}), group_size >= 1"
        )
    grouped = rewards.reshape(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize:
        # Unbiased (n - 1) std as in the GRPO paper / TRL; a group of one has std defined as 0 (advantage is 0 anyway).
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centered)
        # The 1e-4 floor keeps all-equal groups at exactly 0 instead of 0/0.
        centered = centered / (std + 1e-4)
    return centered.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO advantages for consecutive groups of k: r_i minus the mean of the other k-1 rewards; shape [n]."""
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got k={k}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [n], got shape {tuple(rewards.shape)}")
    if rewards.numel() % k != 0:
        raise ValueError(f"number of rewards ({rewards.numel()}) must be a multiple of k ({k})")
    grouped = rewards.reshape(-1, k)
    # Leave-one-out baseline (sum - r_i) / (k - 1).
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(-1)


def reinforce_pp_advantages(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    reduce: Callable[[list[float]], list[float]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025) over [B, T] per-token rewards: returns G_t = r_t + gamma * G_{t+1} over each row's
    masked tokens (no value baseline), then whitened with the mean and biased variance of every masked token of
    the batch; `reduce` sums [count, sum, sum of squares] over processes (runtime.sum), so the batch is the global
    one. Returns (advantages, returns), 0 at masked-out positions."""
    _check_same_shape(token_rewards=token_rewards, mask=mask)
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    keep = mask != 0
    rewards = _masked(token_rewards.detach().double(), keep)
    returns = torch.zeros_like(rewards)
    carry = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        # holes and padding pass the carry through unchanged, as in gae
        carry = torch.where(keep[:, t], rewards[:, t] + gamma * carry, carry)
        returns[:, t] = torch.where(keep[:, t], carry, returns.new_zeros(()))
    moments = [float(keep.sum()), returns.sum().item(), (returns**2).sum().item()]
    count, total, squares = reduce(moments) if reduce is not None else moments
    mean = total / max(count, 1.0)
    var = max(squares / max(count, 1.0) - mean**2, 0.0)
    # OpenRLHF's floor: rsqrt(max(var, 1e-8)), so a batch of equal returns gives 0 advantages, not 0/0
    advantages = _masked((returns - mean) / math.sqrt(max(var, 1e-8)), keep)
    dtype = token_rewards.dtype if token_rewards.is_floating_point() else torch.float32
    return advantages.to(dtype), returns.to(dtype)


def whiten(
    values: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten ``values`` over masked entries: (x - mean) / sqrt(var + eps), masked-out entries returned as 0."""
    if mask is None:
        mask = torch.ones_like(values)
    _check_same_shape(values=values, mask=mask)
    keep = mask != 0
    mean = masked_mean(values, mask)
    # Biased (divide by N) variance over masked entries, as in TRL's masked_whiten.
    var = masked_mean((_masked(values, keep) - mean) ** 2, mask)
    # eps sits inside the square root: rsqrt(var + eps).
    whitened = (_masked(values, keep) - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        # Only rescale: the original mean is added back.
        whitened = whitened + mean
    return _masked(whitened, keep)


def _entropy_rows(logits: torch.Tensor) -> torch.Tensor:
    """Entropy over the last dim as logsumexp(logits) - sum(p * logits)."""
    logz = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - logz.unsqueeze(-1))
    # -inf logits (banned tokens) have p = 0; they are zeroed so 0 * -inf cannot yield NaN.
    finite_logits = logits.masked_fill(torch.isneginf(logits), 0.0)
    return logz - (probs * finite_logits).sum(dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits) over the last dim: [B, T, V] -> [B, T]."""
    if logits.dtype in (torch.float32, torch.float64):
        return _entropy_rows(logits)
    # Low-precision logits: upcast one sequence at a time so only a [T, V] float32 copy exists.
    return torch.stack([_entropy_rows(row.float()) for row in logits])
