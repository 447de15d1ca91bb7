"""Parity tests for rlhfkit.losses against values computed by hand with the math module."""

import math

import pytest
import torch

from rlhfkit.losses import (
    bradley_terry_loss,
    dpo_loss,
    ensemble_reward,
    kto_loss,
    masked_mean,
    orpo_loss,
    reward_centering_loss,
    sequence_logps,
    simpo_loss,
)


def logsigmoid(x: float) -> float:
    """Reference log(sigmoid(x)) in plain Python."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def t(*xs):
    return torch.tensor(list(xs), dtype=torch.float64)


def close(actual, expected, tol=1e-10):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# Two-example DPO batch used throughout.
PC, PR = [-10.0, -7.5], [-12.0, -6.0]  # policy chosen / rejected logps
RC, RR = [-11.0, -7.0], [-11.5, -6.5]  # reference chosen / rejected logps
# logits = (pc - pr) - (rc - rr): ex0 = 2 - 0.5 = 1.5, ex1 = -1.5 - (-0.5) = -1.0
LOGITS = [1.5, -1.0]


def dpo_inputs(requires_grad=False):
    pc, pr = t(*PC), t(*PR)
    if requires_grad:
        pc.requires_grad_(True)
        pr.requires_grad_(True)
    return pc, pr, t(*RC), t(*RR)


# ---------------------------------------------------------------- Bradley-Terry / centering


def test_bradley_terry_no_margin():
    rc, rr = [1.0, 0.5, -0.25], [0.0, 1.5, -1.0]
    expected = sum(-logsigmoid(c - r) for c, r in zip(rc, rr)) / 3
    out = bradley_terry_loss(t(*rc), t(*rr))
    assert out.dim() == 0
    close(out, expected)
    close(bradley_terry_loss(t(*rc), t(*rr), margin=None), expected)


def test_bradley_terry_scalar_margin():
    rc, rr, m = [1.0, 0.5], [0.0, 1.5], 0.75
    expected = (-logsigmoid(1.0 - 0.0 - m) - logsigmoid(0.5 - 1.5 - m)) / 2
    close(bradley_terry_loss(t(*rc), t(*rr), margin=m), expected)
    close(bradley_terry_loss(t(*rc), t(*rr), margin=torch.tensor(m)), expected)


def test_bradley_terry_per_example_margin():
    rc, rr, m = [1.0, 0.5], [0.0, 1.5], [2.0, -1.0]
    expected = (-logsigmoid(1.0 - 2.0) - logsigmoid(-1.0 + 1.0)) / 2
    close(bradley_terry_loss(t(*rc), t(*rr), margin=t(*m)), expected)
    # -logsigmoid(0) = log 2 for the second example
    assert math.isclose(-logsigmoid(0.0), math.log(2.0))


def test_bradley_terry_gradient_direction():
    rc, rr = t(0.2, -0.3).requires_grad_(True), t(0.1, 0.4).requires_grad_(True)
    bradley_terry_loss(rc, rr).backward()
    assert (rc.grad < 0).all() and (rr.grad > 0).all()


def test_reward_centering():
    rc, rr = [1.0, -0.5, 2.0], [0.5, -1.0, -3.0]
    expected = ((1.5) ** 2 + (-1.5) ** 2 + (-1.0) ** 2) / 3  # = 5.5 / 3
    out = reward_centering_loss(t(*rc), t(*rr))
    assert out.dim() == 0
    close(out, expected)
    close(out, 5.5 / 3)


# ---------------------------------------------------------------- DPO


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_sigmoid_no_smoothing(beta):
    losses, _, _ = dpo_loss(*dpo_inputs(), beta=beta)
    close(losses, [-logsigmoid(beta * z) for z in LOGITS])


def test_dpo_sigmoid_label_smoothing():
    beta, ls = 0.5, 0.2
    expected = [-logsigmoid(beta * z) * (1 - ls) - logsigmoid(-beta * z) * ls for z in LOGITS]
    losses, _, _ = dpo_loss(*dpo_inputs(), beta=beta, loss_type="sigmoid", label_smoothing=ls)
    assert losses.shape == (2,)
    close(losses, expected)


def test_dpo_sigmoid_ls0_equals_minus_logsigmoid_of_beta_logits():
    pc, pr, rc, rr = dpo_inputs()
    beta = 0.3
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="sigmoid", label_smoothing=0.0)
    logits = (pc - pr) - (rc - rr)
    close(logits, LOGITS)
    close(losses, -torch.nn.functional.logsigmoid(beta * logits))


def test_dpo_ipo():
    beta = 0.25
    expected = [(z - 1 / (2 * beta)) ** 2 for z in LOGITS]  # (1.5-2)^2 = 0.25, (-1-2)^2 = 9
    losses, _, _ = dpo_loss(*dpo_inputs(), beta=beta, loss_type="ipo")
    close(losses, expected)
    close(losses, [0.25, 9.0])


def test_dpo_hinge():
    beta = 1.0
    expected = [max(0.0, 1 - beta * z) for z in LOGITS]  # [0, 2]
    losses, _, _ = dpo_loss(*dpo_inputs(), beta=beta, loss_type="hinge")
    close(losses, expected)
    close(losses, [0.0, 2.0])
    beta = 0.5
    losses, _, _ = dpo_loss(*dpo_inputs(), beta=beta, loss_type="hinge")
    close(losses, [0.25, 1.5])


def test_dpo_robust_label_smoothing():
    beta, ls = 0.5, 0.2
    expected = [(-logsigmoid(beta * z) * (1 - ls) + logsigmoid(-beta * z) * ls) / (1 - 2 * ls) for z in LOGITS]
    losses, _, _ = dpo_loss(*dpo_inputs(), beta=beta, loss_type="robust", label_smoothing=ls)
    close(losses, expected)


def test_dpo_robust_is_unbiased_estimator():
    # Expected robust loss under a label flipped with probability ls equals the clean sigmoid loss.
    beta, ls = 0.5, 0.2
    pc, pr, rc, rr = dpo_inputs()
    robust, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="robust", label_smoothing=ls)
    robust_flipped, _, _ = dpo_loss(pr, pc, rr, rc, beta=beta, loss_type="robust", label_smoothing=ls)
    clean, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="sigmoid")
    close((1 - ls) * robust + ls * robust_flipped, clean)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_dpo_robust_ls0_equals_sigmoid(beta):
    robust, _, _ = dpo_loss(*dpo_inputs(), beta=beta, loss_type="robust", label_smoothing=0.0)
    sigmoid, _, _ = dpo_loss(*dpo_inputs(), beta=beta, loss_type="sigmoid", label_smoothing=0.0)
    close(robust, sigmoid)
    close(robust, [-logsigmoid(beta * z) for z in LOGITS])


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_dpo_rewards(loss_type):
    beta = 0.5
    pc, pr, rc, rr = dpo_inputs(requires_grad=True)
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type)
    assert losses.shape == chosen.shape == rejected.shape == (2,)
    close(chosen, [beta * (p - r) for p, r in zip(PC, RC)])  # [0.5, -0.25]
    close(rejected, [beta * (p - r) for p, r in zip(PR, RR)])  # [-0.25, 0.25]
    assert not chosen.requires_grad and not rejected.requires_grad
    assert losses.requires_grad


def test_dpo_invalid_loss_type():
    with pytest.raises(ValueError) as err:
        dpo_loss(*dpo_inputs(), loss_type="kto")
    for name in ("sigmoid", "ipo", "hinge", "robust"):
        assert name in str(err.value)


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan")])
def test_dpo_invalid_beta(beta):
    with pytest.raises(ValueError):
        dpo_loss(*dpo_inputs(), beta=beta)


@pytest.mark.parametrize("ls", [-0.1, 0.5, 0.7, float("nan")])
@pytest.mark.parametrize("loss_type", ["sigmoid", "robust"])
def test_dpo_invalid_label_smoothing(ls, loss_type):
    with pytest.raises(ValueError):
        dpo_loss(*dpo_inputs(), loss_type=loss_type, label_smoothing=ls)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_dpo_gradients_flow(loss_type):
    pc, pr, rc, rr = dpo_inputs(requires_grad=True)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=loss_type, label_smoothing=0.0)
    losses.mean().backward()
    assert pc.grad is not None and pr.grad is not None
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert rc.grad is None and rr.grad is None


def test_dpo_sigmoid_gradient_sign_raises_chosen():
    beta = 0.5
    pc, pr, rc, rr = dpo_inputs(requires_grad=True)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta)
    losses.sum().backward()
    # d/dpc -logsigmoid(beta*z) = -beta * sigmoid(-beta*z); gradient descent raises chosen, lowers rejected.
    expected = [-beta / (1 + math.exp(beta * z)) for z in LOGITS]
    close(pc.grad, expected)
    close(pr.grad, [-g for g in expected])
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    # One SGD step increases the chosen log-prob and the margin, and decreases the loss.
    with torch.no_grad():
        new_pc, new_pr = pc - 0.1 * pc.grad, pr - 0.1 * pr.grad
    assert (new_pc > pc).all() and (new_pr < pr).all()
    new_losses, _, _ = dpo_loss(new_pc, new_pr, rc, rr, beta=beta)
    assert (new_losses < losses.detach()).all()


# ---------------------------------------------------------------- SimPO / ORPO


def test_simpo():
    beta, gamma = 2.0, 0.5
    c, r = [-0.8, -1.2], [-1.0, -0.9]
    expected = [-logsigmoid(beta * (a - b) - gamma) for a, b in zip(c, r)]
    # ex0: 2*0.2 - 0.5 = -0.1, ex1: 2*(-0.3) - 0.5 = -1.1
    close(expected, [-logsigmoid(-0.1), -logsigmoid(-1.1)])
    cc, rr = t(*c).requires_grad_(True), t(*r).requires_grad_(True)
    losses, chosen, rejected = simpo_loss(cc, rr, beta=beta, gamma=gamma)
    close(losses, expected)
    close(chosen, [beta * a for a in c])
    close(rejected, [beta * b for b in r])
    assert not chosen.requires_grad and not rejected.requires_grad
    losses.sum().backward()
    assert (cc.grad < 0).all() and (rr.grad > 0).all()


def test_simpo_defaults_and_gamma_is_absolute():
    losses, _, _ = simpo_loss(t(-1.0), t(-1.0))
    close(losses, [-logsigmoid(-0.5)])  # beta*(0) - gamma with default gamma = 0.5
    losses, _, _ = simpo_loss(t(-1.0), t(-1.0), beta=10.0, gamma=0.5)
    close(losses, [-logsigmoid(-0.5)])  # gamma is not scaled by beta


def orpo_reference(c: float, r: float, beta: float) -> float:
    log_odds = (c - r) - (math.log(1 - math.exp(c)) - math.log(1 - math.exp(r)))
    return -beta * logsigmoid(log_odds)


def test_orpo():
    beta = 0.1
    c, r = [-0.3, -2.0, -0.01], [-0.9, -1.5, -5.0]
    cc, rr = t(*c).requires_grad_(True), t(*r).requires_grad_(True)
    losses, chosen, rejected = orpo_loss(cc, rr, beta=beta)
    close(losses, [orpo_reference(a, b, beta) for a, b in zip(c, r)])
    close(chosen, [beta * a for a in c])
    close(rejected, [beta * b for b in r])
    assert not chosen.requires_grad and not rejected.requires_grad
    losses.sum().backward()
    assert torch.isfinite(cc.grad).all() and torch.isfinite(rr.grad).all()
    assert (cc.grad < 0).all() and (rr.grad > 0).all()


def test_orpo_hand_value():
    # c = r = log(0.5): odds both 1, log_odds = 0, loss = beta * log 2.
    losses, _, _ = orpo_loss(t(math.log(0.5)), t(math.log(0.5)), beta=0.2)
    close(losses, [0.2 * math.log(2.0)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_numerically_safe_extremes(dtype):
    c = torch.tensor([-1e-7, -1e-3, -0.6931, -0.6932, -30.0, -200.0], dtype=dtype, requires_grad=True)
    r = torch.tensor([-50.0, -1e-6, -0.6932, -0.6931, -1e-8, -300.0], dtype=dtype, requires_grad=True)
    losses, _, _ = orpo_loss(c, r)
    assert torch.isfinite(losses).all()
    losses.sum().backward()
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()
    if dtype == torch.float64:
        cl, rl = c.tolist(), r.tolist()
        close(losses, [orpo_reference(a, b, 0.1) for a, b in zip(cl, rl)], tol=1e-9)


# ---------------------------------------------------------------- sequence_logps / masked_mean


def manual_sequence_logps(logits, labels, mask):
    logp = torch.log_softmax(logits.double(), dim=-1)
    sums, counts = [], []
    for b in range(labels.shape[0]):
        s, n = 0.0, 0
        for i in range(labels.shape[1]):
            if mask[b, i]:
                s += logp[b, i, labels[b, i]].item()
                n += 1
        sums.append(s)
        counts.append(float(n))
    return sums, counts


def make_sequence_batch(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, V = 3, 6, 11
    logits = (torch.randn(B, T, V, generator=g) * 3).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.long)
    labels = labels.masked_fill(mask == 0, -100)  # unmasked labels are the usual ignore index
    return logits, labels, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sequence_logps_matches_manual(dtype):
    logits, labels, mask = make_sequence_batch(dtype)
    sums, counts = sequence_logps(logits, labels, mask)
    exp_sums, exp_counts = manual_sequence_logps(logits, labels, mask)
    assert sums.shape == counts.shape == (3,)
    assert sums.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    close(sums, exp_sums, tol=tol)
    close(counts, [3.0, 5.0, 0.0])
    close(counts, exp_counts)
    assert sums[2].item() == 0.0


def test_sequence_logps_bool_and_float_mask():
    logits, labels, mask = make_sequence_batch(torch.float64)
    ref_sums, ref_counts = sequence_logps(logits, labels, mask)
    for m in (mask.bool(), mask.float()):
        sums, counts = sequence_logps(logits, labels, m)
        close(sums, ref_sums)
        close(counts, ref_counts)


def test_sequence_logps_bfloat16():
    logits, labels, mask = make_sequence_batch(torch.bfloat16)
    sums, counts = sequence_logps(logits, labels, mask)
    exp_sums, _ = manual_sequence_logps(logits, labels, mask)  # manual upcasts the same bf16 values
    assert sums.dtype == torch.float32
    close(sums, exp_sums, tol=1e-4)
    close(counts, [3.0, 5.0, 0.0])


def test_sequence_logps_hand_value():
    # Uniform logits over V=4: every token has log-prob -log 4.
    logits = torch.zeros(1, 3, 4)
    labels = torch.tensor([[-100, 2, 3]])
    mask = torch.tensor([[0, 1, 1]])
    sums, counts = sequence_logps(logits, labels, mask)
    close(sums, [-2 * math.log(4.0)], tol=1e-6)
    close(counts, [2.0])


def test_sequence_logps_gradient():
    logits, labels, mask = make_sequence_batch(torch.float64)
    logits.requires_grad_(True)
    sums, _ = sequence_logps(logits, labels, mask)
    sums.sum().backward()
    # Gradient of log p(label) w.r.t. logits is onehot(label) - softmax; zero at unmasked positions.
    probs = torch.softmax(logits.detach(), dim=-1)
    onehot = torch.nn.functional.one_hot(labels.clamp(min=0), logits.shape[-1]).double()
    expected = (onehot - probs) * mask.unsqueeze(-1)
    close(logits.grad, expected)


def test_sequence_logps_shape_mismatch():
    logits, labels, mask = make_sequence_batch()
    with pytest.raises(ValueError):
        sequence_logps(logits, labels[:, :-1], mask)


def test_masked_mean():
    values = t(1.0, 2.0, 3.0, 4.0).reshape(2, 2)
    mask = torch.tensor([[1, 0], [1, 1]])
    close(masked_mean(values, mask), (1.0 + 3.0 + 4.0) / 3)
    close(masked_mean(values, mask, dim=1), [1.0, 3.5])
    close(masked_mean(values, mask, dim=0), [2.0, 4.0])
    # NaN at a masked-out position does not leak; an empty mask gives 0 rather than NaN.
    values_nan = t(1.0, float("nan"), 3.0, 4.0).reshape(2, 2)
    close(masked_mean(values_nan, mask), 8.0 / 3)
    close(masked_mean(values, torch.zeros(2, 2)), 0.0)
    close(masked_mean(values, torch.tensor([[0, 0], [1, 0]]), dim=1), [0.0, 3.0])


# ---------------------------------------------------------------- KTO


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_desirable_and_undesirable_hand_values():
    policy, ref = t(-10.0, -7.0, -5.0), t(-11.0, -6.0, -5.5)  # log-ratios 1.0, -1.0, 0.5
    desirable = torch.tensor([True, False, True])
    losses = kto_loss(policy, ref, desirable, kl_estimate=0.3, beta=0.5, desirable_weight=1.5, undesirable_weight=0.7)
    expected = [
        1.5 * (1 - sigmoid(0.5 * (1.0 - 0.3))),
        0.7 * (1 - sigmoid(0.5 * (0.3 - -1.0))),
        1.5 * (1 - sigmoid(0.5 * (0.5 - 0.3))),
    ]
    close(losses, expected)


def test_kto_negative_kl_estimate_is_clamped_at_zero():
    policy, ref, desirable = t(-10.0, -7.0), t(-11.0, -6.0), torch.tensor([True, False])
    close(kto_loss(policy, ref, desirable, kl_estimate=-2.0), kto_loss(policy, ref, desirable, kl_estimate=0.0))
    close(kto_loss(policy, ref, desirable, kl_estimate=0.0), [1 - sigmoid(0.1), 1 - sigmoid(0.1)])


def test_kto_no_gradient_through_the_kl_estimate():
    policy = t(-10.0, -7.0).requires_grad_(True)
    kl = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    losses = kto_loss(policy, t(-11.0, -6.0), torch.tensor([True, False]), kl, beta=0.5)
    losses.sum().backward()
    assert kl.grad is None
    # d/dx (1 - sigmoid(b(x - z))) = -b s(1 - s): a desirable example's log-prob is pushed up, an undesirable one down.
    s0, s1 = sigmoid(0.5 * (1.0 - 0.4)), sigmoid(0.5 * (0.4 + 1.0))
    close(policy.grad, [-0.5 * s0 * (1 - s0), 0.5 * s1 * (1 - s1)])


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"desirable_weight": 0.0}, {"undesirable_weight": -1.0}])
def test_kto_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        kto_loss(t(-1.0), t(-1.0), torch.tensor([True]), 0.0, **kwargs)


# Three members scoring two responses, the rewards by hand:
#   response 0: 1, 2, 6  -> mean 3, min 1, population variance ((1-3)^2 + (2-3)^2 + (6-3)^2) / 3 = 14/3
#   response 1: 0, 0, 0  -> mean 0, min 0, variance 0
MEMBERS = [[1.0, 0.0], [2.0, 0.0], [6.0, 0.0]]


def test_ensemble_reward_matches_hand_computed_values():
    rewards = torch.tensor(MEMBERS, dtype=torch.float64)
    close(ensemble_reward(rewards, "mean"), [3.0, 0.0])
    close(ensemble_reward(rewards, "min"), [1.0, 0.0])
    # uwo = mean - coef * population variance (Coste et al.): 3 - 0.5 * 14/3 = 2/3; the sample variance (7) would
    # give -0.5
    close(ensemble_reward(rewards, "uwo", coef=0.5), [3.0 - 0.5 * 14 / 3, 0.0])
    close(ensemble_reward(rewards, "uwo", coef=0.0), [3.0, 0.0])
    # default method is the mean; one member is that member whatever the method
    close(ensemble_reward(rewards), [3.0, 0.0])
    one = torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    for method in ("mean", "min", "uwo"):
        close(ensemble_reward(one, method, coef=3.0), [0.5, -2.0])


def test_ensemble_reward_refuses_bad_inputs():
    rewards = torch.tensor(MEMBERS)
    with pytest.raises(ValueError, match="unknown ensemble method 'max'"):
        ensemble_reward(rewards, "max")
    with pytest.raises(ValueError, match=r"\[K, n\]"):
        ensemble_reward(torch.tensor([1.0, 2.0]), "mean")
    with pytest.raises(ValueError, match=r"\[K, n\]"):
        ensemble_reward(torch.zeros(0, 3), "mean")
    with pytest.raises(ValueError, match="coef must be >= 0"):
        ensemble_reward(rewards, "uwo", coef=-1.0)
