"""Pure tensor loss functions for reward modelling and preference optimisation.

Everything here depends on torch only: inputs are tensors, outputs are tensors,
and nothing reaches into the rest of rlhfkit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "bradley_terry_loss",
    "reward_centering_loss",
    "dpo_loss",
    "simpo_loss",
    "orpo_loss",
    "sequence_logps",
    "masked_mean",
    "DPO_LOSS_TYPES",
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
    log_odds = (chosen_logps_avg - rejected_logps_avg) - (
        _log1mexp(chosen_logps_avg) - _log1mexp(rejected_logps_avg)
    )
    losses = -beta * F.logsigmoid(log_odds)
    chosen_rewards = (beta * chosen_logps_avg).detach()
    rejected_rewards = (beta * rejected_logps_avg).detach()
    return losses, chosen_rewards, rejected_rewards


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
