"""Parity tests for the RL helpers in rlhfkit.losses against hand-computed values (math module / plain loops)."""

import math

import pytest
import torch

from rlhfkit.losses import (
    entropy_from_logits,
    gae,
    group_advantages,
    grpo_policy_loss,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    whiten,
)

GARBAGE = 1e9


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def close(actual, expected, tol=1e-10):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def with_garbage(x, mask, value=GARBAGE):
    """Copy of x with every masked-out position overwritten by ``value``."""
    return torch.where(mask != 0, x, torch.full_like(x, value))


# ---------------------------------------------------------------- GAE


def ref_gae(rewards, values, gamma, lam):
    """Plain reverse-loop GAE over one fully-valid response (lists of floats), bootstrapping 0 at the end."""
    n = len(rewards)
    adv = [0.0] * n
    next_value, next_adv = 0.0, 0.0
    for i in reversed(range(n)):
        delta = rewards[i] + gamma * next_value - values[i]
        adv[i] = delta + gamma * lam * next_adv
        next_value, next_adv = values[i], adv[i]
    return adv, [a + v for a, v in zip(adv, values)]


R4 = [0.1, -0.2, 0.3, 1.0]
V4 = [0.5, 0.4, -0.1, 0.2]
G, L = 0.9, 0.8


def test_gae_full_row_matches_hand_values():
    adv, ret = gae(t(R4), t(V4), torch.ones(1, 4, dtype=torch.float64), G, L)
    # By hand: A3 = 1.0 - 0.2 = 0.8; delta2 = 0.3 + 0.9*0.2 + 0.1 = 0.58, A2 = 0.58 + 0.72*0.8 = 1.156
    # delta1 = -0.2 + 0.9*(-0.1) - 0.4 = -0.69, A1 = -0.69 + 0.72*1.156 = 0.14232
    # delta0 = 0.1 + 0.9*0.4 - 0.5 = -0.04, A0 = -0.04 + 0.72*0.14232 = 0.0624704
    expected_adv = [0.0624704, 0.14232, 1.156, 0.8]
    close(adv, [expected_adv])
    close(ret, [[a + v for a, v in zip(expected_adv, V4)]])
    ref_adv, ref_ret = ref_gae(R4, V4, G, L)
    close(adv, [ref_adv])
    close(ret, [ref_ret])


def test_gae_prompt_prefix_and_padding_with_garbage():
    # Row 0: 2 prompt tokens, 3 response tokens, 2 padding. Row 1: fully valid up to the last token.
    mask = t([0, 0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1])
    r_resp, v_resp = [0.3, -0.5, 2.0], [0.25, -0.75, 1.5]
    r1 = [0.0, 0.1, 0.0, -0.3, 0.0, 0.2, 1.0]
    v1 = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    rewards = t([7.0, 7.0, *r_resp, 7.0, 7.0], r1)
    values = t([3.0, 3.0, *v_resp, 3.0, 3.0], v1)

    adv, ret = gae(rewards, values, mask, G, L)
    a_resp, ret_resp = ref_gae(r_resp, v_resp, G, L)
    a1, ret1 = ref_gae(r1, v1, G, L)
    close(adv, [[0.0, 0.0, *a_resp, 0.0, 0.0], a1])
    close(ret, [[0.0, 0.0, *ret_resp, 0.0, 0.0], ret1])
    # The last response token bootstraps from 0, not from the padding value: A = r - V.
    assert adv[0, 4].item() == pytest.approx(2.0 - 1.5)

    adv_g, ret_g = gae(with_garbage(rewards, mask), with_garbage(values, mask), mask, G, L)
    close(adv_g, adv)
    close(ret_g, ret)
    adv_n, _ = gae(with_garbage(rewards, mask, math.nan), with_garbage(values, mask, math.inf), mask, G, L)
    close(adv_n, adv)


def test_gae_is_detached():
    values = t(V4).requires_grad_(True)
    rewards = t(R4).requires_grad_(True)
    adv, ret = gae(rewards, values, torch.ones(1, 4, dtype=torch.float64), G, L)
    assert not adv.requires_grad and not ret.requires_grad


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators_match_hand_values():
    lp, ref = [-1.0, -2.5, -0.3], [-1.5, -2.0, -0.3]
    logps, ref_logps = t(lp), t(ref)
    close(kl_penalty(logps, ref_logps, "k1"), [[a - b for a, b in zip(lp, ref)]])
    close(kl_penalty(logps, ref_logps, "k2"), [[0.5 * (a - b) ** 2 for a, b in zip(lp, ref)]])
    close(kl_penalty(logps, ref_logps, "k3"), [[math.exp(b - a) - (b - a) - 1 for a, b in zip(lp, ref)]])
    assert kl_penalty(logps, ref_logps, "k3").shape == logps.shape


def test_k3_nonnegative_and_close_to_k2_for_small_differences():
    gen = torch.Generator().manual_seed(0)
    logps = -torch.rand(4, 16, generator=gen, dtype=torch.float64) * 5
    ref = logps + (torch.rand(4, 16, generator=gen, dtype=torch.float64) - 0.5) * 6
    assert (kl_penalty(logps, ref, "k3") >= 0).all()
    small = logps + 1e-3 * (torch.rand(4, 16, generator=gen, dtype=torch.float64) - 0.5)
    k2, k3 = kl_penalty(logps, small, "k2"), kl_penalty(logps, small, "k3")
    # k3 = x^2/2 + O(x^3) with |x| <= 5e-4: relative gap bounded by ~|x|/3.
    torch.testing.assert_close(k3, k2, rtol=1e-3, atol=1e-15)


def test_kl_unknown_estimator_raises():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(t([0.0]), t([0.0]), "k4")


# ---------------------------------------------------------------- PPO policy loss


def ref_ppo_token(lp, old, a, eps):
    ratio = math.exp(lp - old)
    unclipped = -a * ratio
    clipped = -a * min(max(ratio, 1 - eps), 1 + eps)
    return max(unclipped, clipped), clipped > unclipped


def test_ppo_policy_loss_unclipped_regime():
    eps = 0.2
    lp, old, adv = [-1.0, -2.0, -0.5], [-1.05, -1.9, -0.5], [1.5, -0.7, 2.0]
    loss, stats = ppo_policy_loss(t(lp), t(old), t(adv), torch.ones(1, 3, dtype=torch.float64), eps)
    ratios = [math.exp(a - b) for a, b in zip(lp, old)]
    assert all(abs(r - 1) < eps for r in ratios)
    close(loss, sum(-a * r for a, r in zip(adv, ratios)) / 3)
    assert stats["clip_fraction"] == 0.0
    assert stats["approx_kl"] == pytest.approx(sum(0.5 * (a - b) ** 2 for a, b in zip(lp, old)) / 3, abs=1e-12)
    assert stats["ratio_mean"] == pytest.approx(sum(ratios) / 3, abs=1e-12)
    assert set(stats) == {"clip_fraction", "approx_kl", "ratio_mean"}
    assert all(type(v) is float for v in stats.values())


def test_ppo_policy_loss_clipped_regime_both_signs():
    eps = 0.2
    # tok0: ratio e^0.5 > 1.2, A > 0 -> clipped branch (-1.2*A) wins.
    # tok1: ratio e^-0.5 < 0.8, A < 0 -> clipped branch (-0.8*A) wins.
    # tok2: ratio e^0.5, A < 0 -> unclipped wins (pessimism keeps the bigger ratio).
    # tok3: ratio e^-0.5, A > 0 -> unclipped wins.
    lp = [0.0, -1.0, -0.2, -3.0]
    old = [-0.5, -0.5, -0.7, -2.5]
    adv = [2.0, -1.0, -0.5, 3.0]
    mask = torch.ones(1, 4, dtype=torch.float64)
    loss, stats = ppo_policy_loss(t(lp), t(old), t(adv), mask, eps)

    r_up, r_dn = math.exp(0.5), math.exp(-0.5)
    expected_tokens = [-2.0 * 1.2, 1.0 * 0.8, 0.5 * r_up, -3.0 * r_dn]
    close(loss, sum(expected_tokens) / 4)
    assert stats["clip_fraction"] == pytest.approx(2 / 4)
    ref = [ref_ppo_token(*x, eps) for x in zip(lp, old, adv)]
    close(loss, sum(v for v, _ in ref) / 4)
    assert [c for _, c in ref] == [True, True, False, False]
    assert stats["ratio_mean"] == pytest.approx((2 * r_up + 2 * r_dn) / 4, abs=1e-12)
    assert stats["approx_kl"] == pytest.approx(0.5 * 0.25, abs=1e-12)


def test_ppo_policy_loss_gradient_and_masked_garbage():
    eps = 0.2
    mask = t([0, 1, 1, 1, 0], [1, 1, 0, 0, 0])
    lp = t([-1.0, -0.1, -1.0, -0.2, -1.0], [-0.3, -3.0, -1.0, -1.0, -1.0])
    old = t([-1.0, -0.6, -1.1, -0.25, -1.0], [-0.2, -2.5, -1.0, -1.0, -1.0])
    adv = t([0.0, 1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 0.0, 0.0])

    ref = [
        ref_ppo_token(lp[b, i].item(), old[b, i].item(), adv[b, i].item(), eps)
        for b in range(2)
        for i in range(5)
        if mask[b, i]
    ]
    lp_req = lp.clone().requires_grad_(True)
    loss, stats = ppo_policy_loss(lp_req, old, adv, mask, eps)
    close(loss, sum(v for v, _ in ref) / len(ref))
    assert stats["clip_fraction"] == pytest.approx(sum(c for _, c in ref) / len(ref))
    loss.backward()
    clean_grad = lp_req.grad.clone()
    assert (clean_grad[mask == 0] == 0).all()

    lp_bad = with_garbage(lp, mask).requires_grad_(True)
    loss_g, stats_g = ppo_policy_loss(lp_bad, with_garbage(old, mask, -GARBAGE), with_garbage(adv, mask), mask, eps)
    close(loss_g, loss)
    assert stats_g == pytest.approx(stats)
    loss_g.backward()
    assert torch.isfinite(lp_bad.grad).all()
    close(lp_bad.grad, clean_grad)


# ---------------------------------------------------------------- the GRPO family

# Two sequences of lengths 3 and 1 (masked garbage after): unequal lengths tell the normalisers apart.
GMASK = t([1, 1, 1, 0], [1, 0, 0, 0])
GLP = t([0.0, -1.0, -0.2, -1.0], [-0.3, -1.0, -1.0, -1.0])
GOLD = t([-0.5, -0.5, -0.7, -1.0], [-0.2, -1.0, -1.0, -1.0])
GADV = t([2.0, 2.0, 2.0, 2.0], [-1.0, -1.0, -1.0, -1.0])  # one advantage per sequence, broadcast over its tokens


def token_terms(eps_low, eps_high):
    """Per-token -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) of the two sequences, by hand."""
    out = []
    for b in range(2):
        row = []
        for i in range(4):
            if GMASK[b, i]:
                r, a = math.exp(GLP[b, i].item() - GOLD[b, i].item()), GADV[b, i].item()
                row.append(-min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a))
        out.append(row)
    return out


def test_grpo_loss_types_normalise_by_hand():
    terms = token_terms(0.2, 0.2)
    n_tokens = sum(len(r) for r in terms)
    expected = {
        "grpo": sum(sum(r) / len(r) for r in terms) / 2,
        "dapo": sum(sum(r) for r in terms) / n_tokens,
        "dr_grpo": sum(sum(r) for r in terms) / (2 * 16),
    }
    for loss_type, value in expected.items():
        loss, _ = grpo_policy_loss(GLP, GOLD, GADV, GMASK, loss_type=loss_type, max_tokens=16)
        close(loss, value)
    assert len({round(v, 9) for v in expected.values()}) == 3  # the three normalisers really differ here


def test_gspo_uses_one_sequence_level_ratio():
    loss, stats = grpo_policy_loss(GLP, GOLD, GADV, GMASK, loss_type="gspo", clip_low=0.2)
    # seq0: mean log-ratio (0.5 - 0.5 + 0.5) / 3 = 1/6, A = 2 (inside the clip); seq1: -0.1, A = -1.
    s0, s1 = math.exp(1 / 6), math.exp(-0.1)
    expected = (-min(s0 * 2, min(max(s0, 0.8), 1.2) * 2) + -min(s1 * -1, min(max(s1, 0.8), 1.2) * -1)) / 2
    close(loss, expected)
    assert stats["ratio_mean"] == pytest.approx((s0 + s1) / 2, abs=1e-12) and stats["clip_fraction"] == 0.0
    # a sequence ratio past 1 + clip with A > 0 is clipped as a whole
    loss, stats = grpo_policy_loss(GLP, GOLD - 0.5, GADV, GMASK, loss_type="gspo", clip_low=0.2)
    s1 = math.exp(0.4)
    close(loss, (-1.2 * 2 + s1 * 1) / 2)
    assert stats["clip_fraction"] == 0.5


def test_clip_higher_is_asymmetric():
    # seq0's tokens have ratio e^0.5 ~ 1.65 with A > 0: clipped at 1 + clip_high, not 1 + clip_low.
    for clip_high in (None, 0.28, 1.0):
        terms = token_terms(0.2, 0.2 if clip_high is None else clip_high)
        loss, stats = grpo_policy_loss(GLP, GOLD, GADV, GMASK, loss_type="dapo", clip_low=0.2, clip_high=clip_high)
        close(loss, sum(sum(r) for r in terms) / 4)
    close(terms[0][0], -2.0 * math.exp(0.5))  # clip_high = 1.0: e^0.5 < 2 is inside the band
    assert stats["clip_fraction"] == 0.0
    _, stats = grpo_policy_loss(GLP, GOLD, GADV, GMASK, loss_type="dapo", clip_low=0.2, clip_high=0.28)
    assert stats["clip_fraction"] == pytest.approx(2 / 4)  # seq0's two tokens at e^0.5


def test_dapo_is_bit_identical_to_the_previous_grpo_loss():
    """What grpo computed before loss_type existed (ppo_policy_loss, token mean over the batch), frozen here."""
    lp = GLP.clone().requires_grad_(True)
    loss, stats = grpo_policy_loss(lp, GOLD, GADV, GMASK, loss_type="dapo", clip_low=0.2)
    loss.backward()
    old = GLP.clone().requires_grad_(True)
    keep = GMASK != 0
    log_ratio = torch.where(keep, old - GOLD, torch.zeros((), dtype=old.dtype))
    adv = torch.where(keep, GADV, torch.zeros((), dtype=old.dtype))
    ratio = torch.exp(log_ratio)
    before = masked_mean(torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 0.8, 1.2)), GMASK)
    before.backward()
    assert torch.equal(loss, before) and torch.equal(lp.grad, old.grad)
    assert ppo_policy_loss(GLP, GOLD, GADV, GMASK, 0.2) == (loss.detach(), stats)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "gspo"])
def test_grpo_loss_types_ignore_masked_garbage(loss_type):
    lp = with_garbage(GLP, GMASK).requires_grad_(True)
    loss, _ = grpo_policy_loss(lp, with_garbage(GOLD, GMASK, -GARBAGE), GADV, GMASK, loss_type=loss_type, max_tokens=8)
    clean, _ = grpo_policy_loss(GLP, GOLD, GADV, GMASK, loss_type=loss_type, max_tokens=8)
    close(loss, clean)
    loss.backward()
    assert torch.isfinite(lp.grad).all() and (lp.grad[GMASK == 0] == 0).all()


def test_grpo_policy_loss_refuses_bad_settings():
    with pytest.raises(ValueError, match="loss_type"):
        grpo_policy_loss(GLP, GOLD, GADV, GMASK, loss_type="nope")
    with pytest.raises(ValueError, match="max_tokens"):
        grpo_policy_loss(GLP, GOLD, GADV, GMASK, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="clip"):
        grpo_policy_loss(GLP, GOLD, GADV, GMASK, clip_low=0.0)


# ---------------------------------------------------------------- PPO value loss


def test_ppo_value_loss_without_clipping():
    eps = 0.5
    v, old, ret = [1.0, 0.2, -0.4], [0.9, 0.0, -0.5], [1.5, 0.0, 0.3]
    loss, stats = ppo_value_loss(t(v), t(old), t(ret), torch.ones(1, 3, dtype=torch.float64), eps)
    # |V - V_old| <= eps everywhere, so both branches coincide: 0.5 * mean((V - R)^2).
    close(loss, 0.5 * (0.25 + 0.04 + 0.49) / 3)
    assert stats == {"value_clip_fraction": 0.0}


def test_ppo_value_loss_with_clipping():
    eps = 0.2
    # tok0: V moved 1.0 past V_old toward R: clip(V)=0.2, (0.2-1)^2=0.64 > (1-1)^2=0 -> clipped wins.
    # tok1: V moved 1.0 away from R: clip(V)=-0.2, (-0.2-0)^2=0.04 < (-1-0)^2=1 -> unclipped wins.
    # tok2: within band -> equal.
    v, old, ret = [1.0, -1.0, 0.1], [0.0, 0.0, 0.0], [1.0, 0.0, 0.5]
    loss, stats = ppo_value_loss(t(v), t(old), t(ret), torch.ones(1, 3, dtype=torch.float64), eps)
    close(loss, 0.5 * (0.64 + 1.0 + 0.16) / 3)
    assert stats["value_clip_fraction"] == pytest.approx(1 / 3)


def test_ppo_value_loss_masked_garbage():
    eps = 0.2
    mask = t([0, 1, 1, 0])
    v, old, ret = t([5.0, 1.0, -1.0, 5.0]), t([5.0, 0.0, 0.0, 5.0]), t([5.0, 1.0, 0.0, 5.0])
    v_req = v.clone().requires_grad_(True)
    loss, stats = ppo_value_loss(v_req, old, ret, mask, eps)
    close(loss, 0.5 * (0.64 + 1.0) / 2)
    assert stats["value_clip_fraction"] == pytest.approx(0.5)
    loss.backward()
    # tok1 is clipped (no gradient), tok2 unclipped: d/dV 0.5 * (V - R)^2 / 2 = (V - R) / 2 = -0.5.
    close(v_req.grad, [[0.0, 0.0, -0.5, 0.0]])

    v_bad = with_garbage(v, mask, 1e30).requires_grad_(True)
    loss_g, stats_g = ppo_value_loss(v_bad, with_garbage(old, mask), with_garbage(ret, mask, -1e30), mask, eps)
    close(loss_g, loss)
    assert stats_g == stats
    loss_g.backward()
    close(v_bad.grad, v_req.grad)


# ---------------------------------------------------------------- GRPO / RLOO advantages


def test_group_advantages_normalized_and_not():
    rewards = [1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 2.0, 2.0]
    out = group_advantages(torch.tensor(rewards, dtype=torch.float64), group_size=4)
    # Group 1: mean 2.5, unbiased std sqrt(5/3). Group 2: mean 1, std sqrt(4/3).
    s1, s2 = math.sqrt(5 / 3), math.sqrt(4 / 3)
    expected = [(r - 2.5) / (s1 + 1e-4) for r in rewards[:4]] + [(r - 1.0) / (s2 + 1e-4) for r in rewards[4:]]
    close(out, expected)
    raw = group_advantages(torch.tensor(rewards, dtype=torch.float64), group_size=4, normalize=False)
    close(raw, [-1.5, -0.5, 0.5, 1.5, -1.0, -1.0, 1.0, 1.0])
    # Constant group: exactly 0, not NaN.
    close(group_advantages(torch.tensor([3.0, 3.0, 3.0], dtype=torch.float64), 3), [0.0, 0.0, 0.0])


def test_group_advantages_bad_size_raises():
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 2.0, 3.0]), group_size=2)
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 2.0]), group_size=0)


def test_rloo_hand_examples():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    # k=2: each baseline is the other member of the pair.
    close(rloo_advantages(r, 2), [1 - 2, 2 - 1, 3 - 4, 4 - 3])
    # k=4: baseline = mean of the other three.
    close(rloo_advantages(r, 4), [1 - 3.0, 2 - 8 / 3, 3 - 7 / 3, 4 - 2.0])
    with pytest.raises(ValueError):
        rloo_advantages(r, 1)
    with pytest.raises(ValueError):
        rloo_advantages(r, 3)


# ---------------------------------------------------------------- whiten / entropy


def test_whiten_unmasked_and_masked():
    xs = [1.0, 2.0, 4.0, 9.0]
    mean = sum(xs) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / 4)  # biased (divide by N)
    out = whiten(t(xs))
    close(out, [[(x - mean) / std for x in xs]], tol=1e-7)
    close(whiten(t(xs), shift_mean=False), [[(x - mean) / std + mean for x in xs]], tol=1e-7)

    mask = t([0, 1, 1, 0, 1, 1, 0])
    values = t([GARBAGE, 1.0, 2.0, -GARBAGE, 4.0, 9.0, math.nan])
    expected = [0.0, *[(x - mean) / std for x in xs[:2]], 0.0, *[(x - mean) / std for x in xs[2:]], 0.0]
    close(whiten(values, mask), [expected], tol=1e-7)
    expected_shift = [0.0, *[(x - mean) / std + mean for x in xs[:2]], 0.0]
    expected_shift += [(x - mean) / std + mean for x in xs[2:]] + [0.0]
    close(whiten(values, mask, shift_mean=False), [expected_shift], tol=1e-7)
    # eps sits inside the square root.
    close(whiten(t([1.0, 3.0]), eps=1.0), [[-1 / math.sqrt(2), 1 / math.sqrt(2)]])


def test_entropy_from_logits():
    vocab = 7
    uniform = torch.full((2, 3, vocab), 1.7, dtype=torch.float64)
    close(entropy_from_logits(uniform), torch.full((2, 3), math.log(vocab), dtype=torch.float64))

    row = [2.0, -1.0, 0.5]
    z = sum(math.exp(x) for x in row)
    ps = [math.exp(x) / z for x in row]
    expected = -sum(p * math.log(p) for p in ps)
    logits = torch.tensor([[row, [1000.0, 1000.0, -1000.0]]], dtype=torch.float64)
    out = entropy_from_logits(logits)
    assert out.shape == (1, 2)
    close(out[0, 0], expected)
    # Huge logits stay finite (stable form); two equal winners -> log 2.
    close(out[0, 1], math.log(2))
    # -inf (banned) tokens contribute nothing and produce no NaN.
    banned = torch.tensor([[[0.0, 0.0, -math.inf]]], dtype=torch.float64)
    close(entropy_from_logits(banned), [[math.log(2)]])
    # Low-precision logits are upcast.
    bf = entropy_from_logits(torch.zeros(1, 2, 16, dtype=torch.bfloat16))
    close(bf, [[math.log(16)] * 2], tol=1e-6)


# ---------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_returns_and_global_whitening_by_hand():
    mask = t([1, 1, 1, 0], [1, 1, 0, 0])
    rewards = with_garbage(t([0.1, -0.2, 1.0, 0.0], [0.5, 0.3, 0.0, 0.0]), mask)
    advantages, returns = reinforce_pp_advantages(rewards, mask)
    # gamma 1: each token's return is the sum of its own and every later token reward of the row
    close(returns, t([0.9, 0.8, 1.0, 0.0], [0.8, 0.3, 0.0, 0.0]))
    tokens = [0.9, 0.8, 1.0, 0.8, 0.3]
    mean = sum(tokens) / 5  # 0.76
    std = math.sqrt(sum((x - mean) ** 2 for x in tokens) / 5)  # biased, over every token of the batch
    close(advantages, t([(0.9 - mean) / std, (0.8 - mean) / std, (1.0 - mean) / std, 0.0],
                        [(0.8 - mean) / std, (0.3 - mean) / std, 0.0, 0.0]))  # fmt: skip
    _, discounted = reinforce_pp_advantages(rewards, mask, gamma=0.5)
    close(discounted, t([0.1 + 0.5 * (-0.2 + 0.5 * 1.0), -0.2 + 0.5 * 1.0, 1.0, 0.0], [0.5 + 0.5 * 0.3, 0.3, 0.0, 0.0]))


def test_reinforce_pp_skips_holes_and_floors_the_variance():
    hole = t([1, 0, 1])
    _, returns = reinforce_pp_advantages(with_garbage(t([0.2, 0.0, 0.5]), hole), hole)
    close(returns, t([0.7, 0.0, 0.5]))  # the carry passes through the hole
    mask = t([1, 1], [1, 0])
    equal = t([0.0, 1.0], [1.0, GARBAGE])  # every return is 1: variance 0, advantages 0 (not 0/0)
    advantages, _ = reinforce_pp_advantages(equal, mask)
    close(advantages, t([0.0, 0.0], [0.0, 0.0]))


def test_reinforce_pp_reduce_makes_two_halves_one_batch():
    # The distributed invariant: with `reduce` summing the moments of both processes' rows, each half's advantages
    # equal those of the whole batch.
    torch.manual_seed(0)
    rewards = torch.randn(6, 5, dtype=torch.float64)
    mask = t([1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0])
    whole, _ = reinforce_pp_advantages(rewards, mask)
    seen = {}

    def keep(name):
        return lambda moments: seen.setdefault(name, moments)

    reinforce_pp_advantages(rewards[:3], mask[:3], reduce=keep("a"))
    reinforce_pp_advantages(rewards[3:], mask[3:], reduce=keep("b"))
    both = [x + y for x, y in zip(seen["a"], seen["b"])]
    first, _ = reinforce_pp_advantages(rewards[:3], mask[:3], reduce=lambda _: both)
    second, _ = reinforce_pp_advantages(rewards[3:], mask[3:], reduce=lambda _: both)
    close(torch.cat([first, second]), whole)
    alone, _ = reinforce_pp_advantages(rewards[:3], mask[:3])
    assert not torch.allclose(alone, whole[:3])  # without the reduction a half is whitened on its own statistics


def test_reinforce_pp_refuses_bad_inputs():
    with pytest.raises(ValueError, match="shape mismatch"):
        reinforce_pp_advantages(t([1.0, 2.0]), t([1, 1, 1]))
    with pytest.raises(ValueError, match="gamma"):
        reinforce_pp_advantages(t([1.0]), t([1]), gamma=1.5)
