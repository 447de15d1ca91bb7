"""Plots for reports, written as PNG files.

Figures are built with `matplotlib.figure.Figure` directly, never pyplot: no global backend or display
is touched (saving goes through the Agg canvas), so plotting is safe on a headless machine and inside tests.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

PROXY_COLOR = "tab:blue"
GOLD_COLOR = "tab:orange"


def new_figure(width: float = 7.0, height: float = 4.5):
    """A blank figure (no pyplot state) and its one axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots()


def new_figures(count: int, width: float = 7.0, height: float = 4.5):
    """A blank figure (no pyplot state) and its `count` axes side by side."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, list(figure.subplots(1, count, squeeze=False)[0])


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """Write the figure as PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def png_base64(path: str | Path) -> str:
    """A PNG file as a data URI for an HTML <img src=...>."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
) -> Path:
    """One line per named series of (xs, ys), e.g. a metric against steps for several runs."""
    figure, ax = new_figure()
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o" if len(xs) < 30 else None, markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    return save_figure(figure, path)


def align_zero(left, right) -> None:
    """Set the y-limits of two twin axes so that 0 sits at the same height on both."""
    limits = []
    for ax in (left, right):
        low, high = ax.get_ylim()
        limits.append((min(low, 0.0), max(high, 0.0)))
    # Fraction of each axis below zero; both get the larger one.
    below = max(-low / (high - low) if high > low else 0.5 for low, high in limits)
    below = min(max(below, 0.05), 0.95)
    for ax, (low, high) in zip((left, right), limits):
        span = max(-low / below if below > 0 else 0.0, high / (1 - below))
        ax.set_ylim(-below * span, (1 - below) * span)


def _fit_label(name: str, fit: dict) -> str:
    label = f"{name} fit: α={fit['alpha']:.3g}, β={fit['beta']:.3g}"
    if fit.get("kl_peak") is not None:
        label += f", peak at KL={fit['kl_peak']:.2f}"
    return label


def plot_overoptimisation(rows: list[dict], fits: dict[str, dict], path: str | Path, title: str | None = None) -> Path:
    """Best-of-n over-optimisation curve (Gao, Schulman, Hilton 2022, figure 1 style).

    `rows`: one per n with keys n, d (= sqrt(KL_bon)), proxy, proxy_std, gold, gold_std.
    `fits`: {"proxy": {...}, "gold": {...}} with alpha, beta (and optionally kl_peak) of R(d) = d (alpha - beta d).
    Both scores are drawn as their gain over n = 1, the quantity the fit models; proxy on the left axis and gold on
    the right (they are in different units); the top axis marks n.
    """
    import numpy as np

    rows = sorted(rows, key=lambda r: r["n"])
    base = next((r for r in rows if r["n"] == 1), rows[0])
    ds = np.array([r["d"] for r in rows])
    grid = np.linspace(0.0, ds.max() * 1.05 if ds.max() > 0 else 1.0, 200)
    figure, ax_proxy = new_figure(8.0, 5.0)
    ax_gold = ax_proxy.twinx()
    handles = []
    for key, name, ax, color in (
        ("proxy", "proxy reward", ax_proxy, PROXY_COLOR),
        ("gold", "gold score", ax_gold, GOLD_COLOR),
    ):
        gains = [r[key] - base[key] for r in rows]
        errors = [r.get(f"{key}_std") or 0.0 for r in rows]
        handles.append(
            ax.errorbar(
                ds, gains, yerr=errors, fmt="o", color=color, capsize=3, label=f"{name} (best-of-n, ±1 bootstrap std)"
            )
        )
        fit = fits.get(key)
        if fit is not None:
            (line,) = ax.plot(
                grid,
                grid * (fit["alpha"] - fit["beta"] * grid),
                "-",
                color=color,
                alpha=0.8,
                label=_fit_label(key, fit),
            )
            handles.append(line)
        ax.set_ylabel(f"{name} gain over n=1", color=color)
        ax.tick_params(axis="y", labelcolor=color)
    align_zero(ax_proxy, ax_gold)
    ax_proxy.axhline(0.0, color="grey", linewidth=0.8, alpha=0.6)
    ax_proxy.set_xlabel(r"$d = \sqrt{\mathrm{KL}_{\mathrm{bon}}}$,  KL$_{\mathrm{bon}}$ = log n − (n−1)/n  (nats)")
    ax_proxy.set_xlim(grid[0] - 0.03 * grid[-1], grid[-1])
    ax_proxy.grid(alpha=0.3)
    ax_n = ax_proxy.twiny()
    ax_n.set_xlim(ax_proxy.get_xlim())
    ax_n.set_xticks(ds, [str(r["n"]) for r in rows])
    ax_n.set_xlabel("n (samples per prompt)")
    ax_proxy.legend(handles=handles, loc="upper left", fontsize=8)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


FRONTIER_STYLE = {"dpo": ("tab:blue", "o"), "ppo": ("tab:red", "s"), "grpo": ("tab:green", "^")}


def plot_frontier(points: list[dict], fronts: dict[str, list[str]], path: str | Path, title: str | None = None) -> Path:
    """Gold against KL to the reference, one colour per method (the DPO paper's figure 2 style).

    `points`: dicts with name, method, strength, kl, kl_stderr, gold, gold_stderr; method 'reference' is the starting
    policy (a star). `fronts`: per method, the names of its Pareto-front points in KL order, drawn as a line.
    """
    figure, ax = new_figure(8.0, 5.0)
    by_name = {p["name"]: p for p in points}
    for method in dict.fromkeys(p["method"] for p in points):
        mine = [p for p in points if p["method"] == method]
        if method == "reference":
            for p in mine:
                ax.plot(p["kl"], p["gold"], "*", color="black", markersize=12, label=f"{p['name']} (reference)")
            continue
        color, marker = FRONTIER_STYLE.get(method, ("tab:purple", "D"))
        on_front = set(fronts.get(method, []))
        for filled in (True, False):  # front points filled, the points it beats hollow
            group = [p for p in mine if (p["name"] in on_front) == filled]
            if not group:
                continue
            ax.errorbar(
                [p["kl"] for p in group],
                [p["gold"] for p in group],
                xerr=[p.get("kl_stderr") or 0.0 for p in group],
                yerr=[p.get("gold_stderr") or 0.0 for p in group],
                fmt=marker,
                color=color,
                markerfacecolor=color if filled else "white",
                capsize=2,
                alpha=0.85,
                label=f"{method} (±1 standard error; hollow: off its front)" if filled else None,
            )
        for p in mine:
            ax.annotate(
                f"{p['strength']:g}", (p["kl"], p["gold"]), fontsize=7, textcoords="offset points", xytext=(4, 4)
            )
        front = [by_name[name] for name in fronts.get(method, [])]
        if len(front) > 1:
            ax.plot([p["kl"] for p in front], [p["gold"] for p in front], "-", color=color, alpha=0.7)
    ax.set_xlabel("KL(policy || reference) on the held-out prompts (nats per response, sampled)")
    ax.set_ylabel("mean gold on the held-out prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "reward/KL frontier: lines join each method's Pareto front; labels are strengths")
    return save_figure(figure, path)


def plot_gao_forms(fit: dict, path: str | Path, title: str | None = None) -> Path:
    """An online run's gold gain against d = sqrt(KL) with both Gao et al. forms fitted to it.

    `fit`: what evaluate.overoptimisation.rl_fit_from_metrics returns (points, and the 'rl' and 'bon' fits, each with
    alpha, beta and its fitted start); every curve and point is drawn as the gain over that form's fitted start.
    """
    import numpy as np

    from ..evaluate.overoptimisation import bon_form, rl_form

    d = np.array([p["d"] for p in fit["points"]])
    gold = np.array([p["gold"] for p in fit["points"]])
    grid = np.linspace(0.0, d.max() * 1.05 if d.max() > 0 else 1.0, 200)
    figure, ax = new_figure(7.0, 4.5)
    rl, bon = fit["rl"], fit["bon"]
    ax.plot(d, gold - rl["start"], "o", color=GOLD_COLOR, markersize=3, alpha=0.6, label="gold per iteration")
    for form, function, style in ((rl, rl_form, "-"), (bon, bon_form, "--")):
        name = "RL form d(α − β log d)" if form["form"] == "rl" else "best-of-n form d(α − β d)"
        r2 = f", R²={form['r2']:.2f}" if form.get("r2") is not None else ""
        ax.plot(
            grid,
            function(grid, form["alpha"], form["beta"]) + form["start"] - rl["start"],
            style,
            color="black" if form["form"] == "rl" else "grey",
            label=f"{name}: α={form['alpha']:.3g}, β={form['beta']:.3g}{r2}",
        )
    ax.axhline(0.0, color="grey", linewidth=0.8, alpha=0.6)
    ax.set_xlabel(r"$d = \sqrt{\mathrm{KL}}$ (KL to the reference, nats per response)")
    ax.set_ylabel("gold gain over the fitted start")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Gao et al. forms fitted to an online run")
    return save_figure(figure, path)


def plot_pareto(result: dict, path: str | Path, title: str | None = None) -> Path:
    """The gold of the first two objectives of a Pareto sweep (rlhfkit pareto), one point per weighting.

    `result`: pareto.json's content: objectives, points (weights, gold, gold_stderr, on_front) and policy. Points on
    the front are filled and joined by a line; dominated points are grey crosses; the star is the policy itself. With
    more than two objectives a point may sit on the front through an objective the axes do not show."""
    x_name, y_name = result["objectives"][:2]
    figure, ax = new_figure(7.0, 5.0)
    for on_front in (True, False):
        group = [p for p in result["points"] if p["on_front"] == on_front]
        if not group:
            continue
        errors = [[(p.get("gold_stderr") or {}).get(name) or 0.0 for p in group] for name in (x_name, y_name)]
        ax.errorbar(
            [p["gold"][x_name] for p in group],
            [p["gold"][y_name] for p in group],
            xerr=errors[0],
            yerr=errors[1],
            fmt="o" if on_front else "x",
            color=GOLD_COLOR if on_front else "grey",
            markersize=7,
            capsize=2,
            label="on the front (±1 standard error)" if on_front else "dominated",
        )
    front = sorted((p for p in result["points"] if p["on_front"]), key=lambda p: p["gold"][x_name])
    if len(front) > 1:
        ax.plot([p["gold"][x_name] for p in front], [p["gold"][y_name] for p in front], "-", color=GOLD_COLOR)
    for p in result["points"]:
        ax.annotate(
            "/".join(f"{w:.2g}" for w in p["weights"]),
            (p["gold"][x_name], p["gold"][y_name]),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, 4),
        )
    policy = result.get("policy")
    if policy:
        ax.plot(policy["gold"][x_name], policy["gold"][y_name], "*", color="black", markersize=12, label="the policy")
    ax.set_xlabel(f"gold {x_name}")
    ax.set_ylabel(f"gold {y_name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    method = "best-of-n" if result.get("method") == "bon" else "GRPO"
    labels = "/".join(result["objectives"])
    ax.set_title(title or f"Pareto front, {method} per weighting; labels: weights {labels}")
    return save_figure(figure, path)
