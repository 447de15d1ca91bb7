"""Best-of-n over-optimisation sweep (Gao, Schulman, Hilton 2022, "Scaling laws for reward model over-optimization").

Sample `max_n` responses per prompt once and score every one with the proxy reward (the one best-of-n selects by)
and the gold judge. For each n the expected proxy and gold of the best of n come from the unbiased estimator below,
so one set of samples gives the whole curve. Both are set against the analytic best-of-n KL,
KL_bon(n) = log n - (n - 1) / n (Stiennon et al. 2020; an upper bound on the true KL, Beirami et al. 2024), and fitted
with Gao et al.'s best-of-n form R(d) = d (alpha - beta d), d = sqrt(KL_bon), R the gain over n = 1. The proxy is
expected to keep rising with n; the gold, when the proxy is imperfect, to peak near d* = alpha / (2 beta) and fall.

Unbiased best-of-n estimator (Nakano et al. 2021, appendix; Gao et al. 2022): sort a prompt's N samples by proxy.
A random n-subset (drawn without replacement) has sample i as its best exactly when i is in it and the other n - 1
come from the rank_i samples below it, so P(i is the best of n) = C(rank_i, n - 1) / C(N, n), rank_i = number of
samples with a lower proxy. E[score of the best of n] = sum_i P(i) score_i, averaged over prompts. Proxy ties are
broken at random: tied samples share their group's probability equally.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..atomic import write_json
from ..config import BonSweepConfig, save_config
from ..console import console, progress_bar
from ..data.records import load_records, read_jsonl, write_jsonl
from ..errors import ConfigError
from ..evaluate.overoptimisation import fit_gain, shape_line
from ..models.loading import load_causal_lm, load_tokenizer
from ..resolve import resolve_model_path
from ..rollout import sample_with
from ..scoring import call_scorer, load_scorer
from ..train import setup_torch

# ---------------------------------------------------------------- estimator, KL, fit


def sweep_ns(max_n: int, ns: list[int] | None = None) -> list[int]:
    """The sweep's n values, sorted, always with n = 1 (the baseline every gain is measured from)."""
    if ns is None:
        ns = [2**k for k in range(max_n.bit_length()) if 2**k <= max_n] + [max_n]
    return sorted({1, *ns})


def kl_bon(n: float) -> float:
    """Analytic KL(best-of-n || policy) = log n - (n - 1) / n, in nats (defined for real n >= 1 too)."""
    return math.log(n) - (n - 1) / n


def best_of_n_weights(proxy: np.ndarray, n: int) -> np.ndarray:
    """P(sample i is the best of a random n-subset of the N samples), by proxy; shape [N], sums to 1."""
    size = len(proxy)
    if not 1 <= n <= size:
        raise ValueError(f"n={n} outside 1..{size}")
    total = math.comb(size, n)
    order = np.argsort(proxy, kind="stable")
    by_rank = np.array([math.comb(rank, n - 1) / total for rank in range(size)])  # rank = samples below
    weights = np.empty(size)
    weights[order] = by_rank
    # Ties: the group's total probability is order-invariant; a random tie-break shares it equally.
    _, group = np.unique(proxy, return_inverse=True)
    return (np.bincount(group, weights=weights) / np.bincount(group))[group]


def expected_best_of_n(proxy: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per prompt, the expected `values` of the best-of-n (selected by `proxy`) from N samples; both [P, N] -> [P]."""
    return np.array([best_of_n_weights(p, n) @ v for p, v in zip(proxy, values)])


def describe_fit(alpha: float, beta: float, d: np.ndarray, gain: np.ndarray) -> dict:
    """alpha, beta, R^2 of the fit on the gains, and the fitted peak d* = alpha / (2 beta) when beta > 0."""
    predicted = d * (alpha - beta * d)
    spread = float(((gain - gain.mean()) ** 2).sum())
    fit = {
        "alpha": alpha,
        "beta": beta,
        "r2": 1.0 - float(((gain - predicted) ** 2).sum()) / spread if spread > 0 else None,
        "d_peak": None,
        "kl_peak": None,
        "n_peak": None,
        "gain_peak": None,
        "peak_in_range": None,
    }
    if beta > 0:
        d_peak = alpha / (2 * beta)
        fit.update(
            d_peak=d_peak,
            kl_peak=d_peak**2,
            gain_peak=alpha * alpha / (4 * beta),
            peak_in_range=bool(0 < d_peak <= d.max()),
            n_peak=n_for_kl(d_peak**2) if d_peak > 0 else 1.0,
        )
    return fit


def n_for_kl(kl: float) -> float:
    """The (real) n whose KL_bon is `kl`, by bisection (KL_bon rises with n)."""
    low, high = 1.0, 2.0
    while kl_bon(high) < kl and high < 1e12:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if kl_bon(mid) < kl else (low, mid)
    return (low + high) / 2


def fall_from_peak(ns: list[int], means: np.ndarray, boot: np.ndarray | None) -> tuple[int, float, float | None]:
    """(n of the highest mean, its mean minus the last n's, the bootstrap std of that fall).

    `boot` is [resamples, len(ns)]: each row the means over one resample of the prompts. The fall is taken on the
    same resample at both n (paired), so the prompt-to-prompt spread the two means share cancels: a fall can be
    clear while each mean's own std is larger than it.
    """
    best = int(np.argmax(means))
    drop = float(means[best] - means[-1])
    drop_std = float((boot[:, best] - boot[:, -1]).std(ddof=1)) if boot is not None else None
    return ns[best], drop, drop_std


def reuse_samples(folder: Path, max_n: int):
    """The samples of an earlier sweep (its samples.jsonl, in prompt order) and its sweep.json; refuses a sweep of
    another max_n or an unfinished one."""
    from ..rollout import Samples

    summary = folder / "sweep.json"
    if not summary.is_file():
        raise ConfigError(f"samples_from: {folder} holds no finished bon-sweep (no sweep.json)")
    source = json.loads(summary.read_text())
    if source.get("max_n") != max_n:
        raise ConfigError(
            f"samples_from: {folder} sampled max_n={source.get('max_n')}; set max_n={source.get('max_n')}"
        )
    rows = [row for _, row in read_jsonl(folder / "samples.jsonl")]
    if len(rows) != source["num_prompts"] * max_n:
        raise ConfigError(f"samples_from: {folder / 'samples.jsonl'} has {len(rows)} samples, not {source['samples']}")
    if "truncated" not in rows[0]:
        raise ConfigError(f"samples_from: {folder} was written by an older rlhfkit (no 'truncated'); rerun that sweep")
    samples = Samples([r["prompt"] for r in rows], [r["response"] for r in rows], [bool(r["truncated"]) for r in rows])
    return samples, source


# ---------------------------------------------------------------- the stage


def run(config: BonSweepConfig) -> dict:
    from ..online import RewardFunction
    from ..report.plots import plot_overoptimisation
    from ..resolve import resolve_prompts

    out = Path(config.output_dir)
    ns = sweep_ns(config.max_n, config.ns)
    setup_torch(config.seed, config.threads)
    proxy_fn = RewardFunction(config.rewards)
    gold_fn = load_scorer(config.gold)
    if config.samples_from:
        samples, source = reuse_samples(Path(config.samples_from), config.max_n)
        path, prompt_path, num_prompts = Path(source["model"]), Path(source["prompts"]), source["num_prompts"]
        save_config(config, out)
    else:
        path = resolve_model_path(config.model)
        prompt_path = resolve_prompts(config.prompts)
        records = load_records(prompt_path, "prompt", config.columns)[: config.num_prompts]
        if not records:
            raise ConfigError(f"prompts: {prompt_path} has no prompts")
        num_prompts = len(records)
        tokenizer = load_tokenizer(path, padding_side="left")
        model = load_causal_lm(path)
        save_config(config, out)
        samples = sample_with(
            config,
            model,
            tokenizer,
            [r.prompt for r in records for _ in range(config.max_n)],
            f"sampling {config.max_n} per prompt",
        )
    size = config.max_n
    proxy_scores: list[float] = []
    chunk = 256
    with progress_bar("scoring with the proxy", len(samples.responses)) as advance:
        for start in range(0, len(samples.responses), chunk):
            scores, _ = proxy_fn(samples.prompts[start : start + chunk], samples.responses[start : start + chunk])
            proxy_scores += scores.tolist()
            advance(len(scores))
    gold_scores = call_scorer(gold_fn, samples.prompts, samples.responses)
    write_jsonl(
        out / "samples.jsonl",
        [
            {
                "prompt_index": i // size,
                "prompt": p,
                "response": r,
                "truncated": t,
                "proxy": round(s, 5),
                "gold": round(g, 5),
            }
            for i, (p, r, t, s, g) in enumerate(
                zip(samples.prompts, samples.responses, samples.truncated, proxy_scores, gold_scores)
            )
        ],
    )

    shape = (num_prompts, size)
    proxy = np.array(proxy_scores).reshape(shape)
    gold = np.array(gold_scores).reshape(shape)
    words = np.array([len(r.split()) for r in samples.responses], float).reshape(shape)
    # Per prompt and n: [P, len(ns)] expected proxy, gold and length of the best of n.
    per_prompt = {
        key: np.stack([expected_best_of_n(proxy, values, n) for n in ns], 1)
        for key, values in (("proxy", proxy), ("gold", gold), ("words", words))
    }
    d = np.sqrt([kl_bon(n) for n in ns])

    def gains_fit(means: np.ndarray) -> tuple[float, float]:
        return fit_gain(d, means - means[0])

    rng = np.random.default_rng(config.seed)
    resamples = rng.integers(0, num_prompts, size=(config.bootstrap, num_prompts))
    rows, fits = [], {}
    means = {key: values.mean(0) for key, values in per_prompt.items()}
    # Bootstrap over prompts: std of each mean, and of alpha and beta refitted on each resample.
    boot = {key: values[resamples].mean(1) for key, values in per_prompt.items()} if config.bootstrap else None
    for key in ("proxy", "gold"):
        alpha, beta = gains_fit(means[key])
        fits[key] = describe_fit(alpha, beta, d, means[key] - means[key][0])
        if boot is not None:
            refits = np.array([gains_fit(m) for m in boot[key]])
            fits[key]["alpha_std"], fits[key]["beta_std"] = (
                float(refits[:, 0].std(ddof=1)),
                float(refits[:, 1].std(ddof=1)),
            )
    for j, n in enumerate(ns):
        row = {"n": n, "kl": kl_bon(n), "d": float(d[j])}
        for key in ("proxy", "gold"):
            row[key] = float(means[key][j])
            row[f"{key}_std"] = float(boot[key][:, j].std(ddof=1)) if boot is not None else None
        row["words"] = float(means["words"][j])
        rows.append(row)

    best_n, drop, drop_std = fall_from_peak(ns, means["gold"], boot["gold"] if boot is not None else None)
    gold_best = rows[ns.index(best_n)]
    result = {
        "stage": "bon-sweep",
        "model": str(path),
        "prompts": str(prompt_path),
        "num_prompts": num_prompts,
        "samples_from": config.samples_from,
        "max_n": size,
        "samples": len(samples.responses),
        "rewards": [s.model_dump(exclude_none=True) for s in config.rewards],
        "gold": config.gold,
        "bootstrap": config.bootstrap,
        "truncated_share": samples.truncated_share,
        "estimator": "unbiased best-of-n over max_n samples: P(i best of n) = C(rank_i, n-1) / C(max_n, n)",
        "rows": rows,
        "fits": fits,
        "proxy_monotone": all(b["proxy"] >= a["proxy"] - 1e-12 for a, b in zip(rows, rows[1:])),
        "gold_best_n": gold_best["n"],
        "gold_drop_from_best": drop,
        "gold_drop_std": drop_std,
        # the published shape: gold peaks inside the sweep and falls by more than two standard errors of the fall
        "gold_peaks_and_falls": bool(drop_std is not None and drop > 0 and drop > 2 * drop_std),
    }
    table = format_table(rows, fits)
    (out / "sweep.md").write_text(
        f"# Best-of-n sweep: {path.name} on {num_prompts} prompts x {size} samples\n\n{table}\n\n{shape_line(result)}\n"
    )
    result["plot"] = str(
        plot_overoptimisation(
            rows,
            fits,
            out / "sweep.png",
            title=f"best-of-n over-optimisation ({num_prompts} prompts, {size} samples each)",
        )
    )
    write_json(out / "sweep.json", result)
    console.print(table)
    console.print(shape_line(result))
    console.print(f"sweep: {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'}")
    return result


def format_fit(name: str, fit: dict) -> str:
    def pm(key: str) -> str:
        return f" ± {fit[key]:.3g}" if fit.get(key) is not None else ""

    text = f"{name}: alpha = {fit['alpha']:.4g}{pm('alpha_std')}, beta = {fit['beta']:.4g}{pm('beta_std')}"
    if fit["r2"] is not None:
        text += f", R^2 = {fit['r2']:.3f}"
    if fit["d_peak"] is not None:
        where = "inside" if fit["peak_in_range"] else "beyond"
        text += (
            f"; fitted peak at d* = {fit['d_peak']:.3f} (KL* = {fit['kl_peak']:.3f} nats, n ≈ {fit['n_peak']:.3g}, "
            "gain "
            f"{fit['gain_peak']:.3g}), {where} the sampled range"
        )
    else:
        text += "; no peak (beta <= 0: still rising)"
    return text


def format_table(rows: list[dict], fits: dict[str, dict]) -> str:
    def cell(value, std) -> str:
        return f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")

    lines = ["| n | KL_bon | d = sqrt(KL) | proxy | gold | words |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['kl']:.3f} | {r['d']:.3f} | {cell(r['proxy'], r['proxy_std'])} | "
            f"{cell(r['gold'], r['gold_std'])} "
            f"| {r['words']:.1f} |"
        )
    lines += [
        "",
        "Fit of the gain over n = 1: R(d) = d (alpha - beta d) (Gao et al. 2022); ± is the bootstrap std over prompts.",
        "",
    ]
    lines += [f"- {format_fit(key, fit)}" for key, fit in fits.items()]
    return "\n".join(lines)
