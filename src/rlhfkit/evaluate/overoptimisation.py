"""The two functional forms of Gao, Schulman, Hilton (2022), "Scaling laws for reward model over-optimization", with
d = sqrt(KL(policy || reference)) in sqrt-nats and R the gold gain over the starting policy:

- best-of-n:  R_bon(d) = d (alpha - beta d),      peak at d* = alpha / (2 beta), R(d*) = alpha^2 / (4 beta);
- online RL:  R_rl(d)  = d (alpha - beta log d),  peak at d* = exp(alpha / beta - 1), R(d*) = beta d*.

Both are linear in (alpha, beta), so each fit is least squares on two features. `fit_gain` fits the best-of-n form to
gains measured from an exact baseline (bon-sweep's n = 1); `rl_fit_from_metrics` fits both forms to an online run's
metrics.jsonl, where the start's gold is one noisy batch, so the starting gold is fitted as an intercept too.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import DataError


def fit_gain(d: np.ndarray, gain: np.ndarray) -> tuple[float, float]:
    """Least squares of gain = d (alpha - beta d) = alpha d - beta d^2 (no intercept: zero gain at d = 0); (alpha,
    beta)."""
    d, gain = np.asarray(d, float), np.asarray(gain, float)
    x1, x2 = d, -(d**2)
    # Normal equations of the two-feature regression, solved in closed form.
    s11, s12, s22 = x1 @ x1, x1 @ x2, x2 @ x2
    t1, t2 = x1 @ gain, x2 @ gain
    det = s11 * s22 - s12 * s12
    if det <= 1e-12 * max(s11 * s22, 1e-300):
        raise ValueError("the fit needs at least two distinct d > 0")
    return float((s22 * t1 - s12 * t2) / det), float((s11 * t2 - s12 * t1) / det)


def d_log_d(d: np.ndarray) -> np.ndarray:
    """d log d, with its limit 0 at d = 0."""
    d = np.asarray(d, float)
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


def rl_form(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """R_rl(d) = d (alpha - beta log d) = alpha d - beta d log d."""
    return alpha * np.asarray(d, float) - beta * d_log_d(d)


def bon_form(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """R_bon(d) = d (alpha - beta d)."""
    d = np.asarray(d, float)
    return d * (alpha - beta * d)


FORMS = {"rl": (rl_form, lambda d: -d_log_d(d)), "bon": (bon_form, lambda d: -(np.asarray(d, float) ** 2))}


def fit_form(form: str, d: np.ndarray, gold: np.ndarray, intercept: bool = True) -> dict:
    """Least squares of gold = start + alpha d + beta * second(d) (second(d) = -d log d for 'rl', -d^2 for 'bon');
    with `intercept=False` the start is 0 and `gold` is already a gain. Returns alpha, beta, start, r2 and the peak."""
    function, second = FORMS[form]
    d, gold = np.asarray(d, float), np.asarray(gold, float)
    columns = [d, second(d)] + ([np.ones_like(d)] if intercept else [])
    design = np.stack(columns, 1)
    if len(d) < design.shape[1] or np.linalg.matrix_rank(design) < design.shape[1]:
        raise ValueError(f"the {form} fit needs at least {design.shape[1]} points with distinct d > 0")
    coefs, *_ = np.linalg.lstsq(design, gold, rcond=None)
    alpha, beta = float(coefs[0]), float(coefs[1])
    start = float(coefs[2]) if intercept else 0.0
    predicted = start + function(d, alpha, beta)
    spread = float(((gold - gold.mean()) ** 2).sum())
    fit = {
        "form": form,
        "alpha": alpha,
        "beta": beta,
        "start": start,
        "r2": 1.0 - float(((gold - predicted) ** 2).sum()) / spread if spread > 0 else None,
        "d_peak": None,
        "kl_peak": None,
        "gain_peak": None,
        "peak_in_range": None,
    }
    if beta > 0:
        d_peak = alpha / (2 * beta) if form == "bon" else math.exp(min(alpha / beta - 1, 50.0))
        if d_peak > 0:
            fit.update(
                d_peak=d_peak,
                kl_peak=d_peak**2,
                gain_peak=float(function(np.array([d_peak]), alpha, beta)[0]),
                peak_in_range=bool(d_peak <= d.max()),
            )
    return fit


def rl_fit_from_metrics(path: str | Path, kl_key: str = "kl", gold_key: str = "gold") -> dict:
    """Both Gao et al. forms fitted to gold against d = sqrt(KL) over the steps of an online run's metrics.jsonl.

    Every row that logs both keys is a point (the per-iteration batch means, not the rolling `*_avg`, which lag);
    a slightly negative sampled KL counts as 0. Returns {"points": [{step, kl, d, gold}], "rl": fit, "bon": fit},
    each fit as `fit_form` gives it, with the starting gold fitted as its intercept.
    """
    from .detectors import load_metrics

    rows = [r for r in load_metrics(path) if _number(r.get(kl_key)) and _number(r.get(gold_key))]
    if len(rows) < 4:
        raise DataError(
            f"{path}: {len(rows)} rows log both '{kl_key}' and '{gold_key}'; the RL fit needs at least 4 (an online "
            "run with a gold judge: ppo, grpo or rloo with gold set)"
        )
    kl = np.array([max(float(r[kl_key]), 0.0) for r in rows])
    gold = np.array([float(r[gold_key]) for r in rows])
    d = np.sqrt(kl)
    try:
        fits = {form: fit_form(form, d, gold) for form in ("rl", "bon")}
    except ValueError as exc:
        raise DataError(f"{path}: {exc} (the run's KL never moved)") from None
    points = [
        {"step": int(r.get("step", i + 1)), "kl": float(k), "d": float(x), "gold": float(g)}
        for i, (r, k, x, g) in enumerate(zip(rows, kl, d, gold))
    ]
    return {"metrics": str(path), "points": points, **fits}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def describe(fit: dict) -> str:
    """One line: the form, alpha, beta, R^2 and where the fitted peak is."""
    formula = "d (alpha - beta log d)" if fit["form"] == "rl" else "d (alpha - beta d)"
    text = f"R(d) = {formula}: alpha = {fit['alpha']:.4g}, beta = {fit['beta']:.4g}"
    if fit.get("r2") is not None:
        text += f", R^2 = {fit['r2']:.3f}"
    if fit.get("d_peak") is not None:
        where = "inside" if fit["peak_in_range"] else "beyond"
        text += f"; peak at KL = {fit['kl_peak']:.3g} nats (gain {fit['gain_peak']:.3g}), {where} the measured range"
    else:
        text += "; no peak (still rising)"
    return text


def shape_line(result: dict) -> str:
    """What the measured points (not the fit) show: does the proxy rise with n, where is the gold highest."""
    rows = result["rows"]
    best, last, before = next(r for r in rows if r["n"] == result["gold_best_n"]), rows[-1], rows[-2]
    proxy = "rises monotonically" if result["proxy_monotone"] else "does not rise monotonically"
    if best is last:
        gold = (
            f"gold is highest at the largest n={last['n']} ({last['gold']:.4f}; {last['gold'] - before['gold']:+.4f} "
            f"from n={before['n']}, first step {rows[1]['gold'] - rows[0]['gold']:+.4f}): no peak inside the sweep"
        )
    else:
        std = result.get("gold_drop_std")
        if std is None:
            verdict = ""
        elif result["gold_peaks_and_falls"]:
            sigmas = result["gold_drop_from_best"] / std
            verdict = f", {sigmas:.1f} standard errors of the fall ({std:.4f}): a real fall"
        else:
            verdict = f", within two standard errors of the fall ({std:.4f}): not a clear fall"
        gold = (
            f"gold peaks at n={best['n']} ({best['gold']:.4f}) and falls to {last['gold']:.4f} at n={last['n']} "
            f"({result['gold_drop_from_best']:.4f} below its peak{verdict})"
        )
    return f"measured: proxy {proxy} with n; {gold}"
