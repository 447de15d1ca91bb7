"""`rlhfkit report RUN_DIR`: one self-contained HTML file (inline CSS, plots embedded as base64 PNG).

The report reads what a run folder holds, stage by stage; a section whose stage did not run says so
instead of disappearing, so every report has the same outline:
data and agreement, reward-model audit, reward heads per objective, distribution shift, prompt coverage, training
curves, over-optimisation, ensemble against a single reward model, the Pareto front of the objectives, detectors,
gate, samples. An optional
section (the reward/KL frontier) appears only when its stage's output is there.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from . import plots

SECTIONS = [
    ("data", "Data and agreement"),
    ("reward", "Reward-model audit"),
    ("heads", "Reward heads per objective"),
    ("shift", "Distribution shift"),
    ("coverage", "Prompt coverage"),
    ("training", "Training curves"),
    ("overoptimisation", "Over-optimisation"),
    ("ensemble", "Ensemble against a single reward model"),
    ("pareto", "Pareto front of the objectives"),
    ("detectors", "Detector verdicts"),
    ("gate", "Acceptance gate"),
    ("samples", "Before and after"),
]
# Sections shown only when their stage ran (no placeholder): key -> (title, the section they follow).
OPTIONAL_SECTIONS = {"frontier": ("Reward/KL frontier", "overoptimisation")}
CURVES = [
    ("reward", "proxy reward"),
    ("gold", "gold"),
    ("kl", "KL to reference"),
    ("response_length", "response length (tokens)"),
    ("distinct_2", "distinct-2"),
    ("loss", "loss"),
    ("val_accuracy", "validation accuracy"),
    ("reward_accuracy", "DPO reward accuracy"),
]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem} td,th{border:1px solid #ccc;padding:.25rem .55rem;
text-align:left;vertical-align:top}
th{background:#f3f3f3} .pass{color:#137333;font-weight:600} .fail{color:#b3261e;font-weight:600} .muted{color:#777}
figure{margin:.8rem 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85rem;color:#555}
.samples td{width:33%;font-size:.88rem} nav a{margin-right:.8rem}
"""


def _read_json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(path: Path, caption: str) -> str:
    return (
        f'<figure><img alt="{html.escape(caption)}" '
        f'src="{plots.png_base64(path)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def _missing(what: str) -> str:
    return f'<p class="muted">Not in this run folder: {html.escape(what)}.</p>'


def stage_dirs(run_dir: Path) -> dict[str, Path]:
    """Sub-folders (or the folder itself) that hold a stage's config.yaml, keyed by folder name."""
    found = {p.parent.name: p.parent for p in sorted(run_dir.glob("*/config.yaml"))}
    if (run_dir / "config.yaml").is_file() and (run_dir / "metrics.jsonl").is_file():
        found[run_dir.name] = run_dir
    return found


def section_data(run_dir: Path, stages: dict[str, Path], figures: Path) -> str:
    parts = []
    for name, folder in stages.items():
        summary = _read_json(folder / "summary.json") or {}
        if summary.get("stage") == "pairs":
            parts.append(
                _table(
                    [
                        "pairs",
                        "skipped",
                        "panel majority agrees with gold",
                        "mean gold of candidates",
                        "cut at max_new_tokens",
                    ],
                    [
                        [
                            summary.get("pairs"),
                            summary.get("skipped"),
                            summary.get("panel_matches_gold"),
                            summary.get("mean_gold"),
                            summary.get("truncated_share"),
                        ]
                    ],
                )
            )
            if (folder / "judgments.jsonl").is_file():
                from ..feedback.agreement import agreement_report

                report = agreement_report(folder / "judgments.jsonl")
                parts.append(
                    _table(
                        [
                            "annotators",
                            "judgments",
                            "raw agreement",
                            "mean Cohen's kappa",
                            "Fleiss' kappa",
                            "Krippendorff's alpha",
                        ],
                        [
                            [
                                report["annotators"],
                                report["judgments"],
                                report["raw_agreement"],
                                report["mean_cohen_kappa"],
                                report["fleiss_kappa"],
                                report["krippendorff_alpha"],
                            ]
                        ],
                    )
                )
                pairs = sorted(report.get("cohen_kappa", {}).items())
                if pairs:
                    path = figures / f"agreement_{name}.png"
                    fig, ax = plots.new_figure(6, 3.2)
                    ax.bar([p for p, _ in pairs], [v for _, v in pairs], color="tab:green")
                    ax.set_ylabel("Cohen's kappa")
                    ax.set_ylim(min(0, min(v for _, v in pairs)), 1)
                    ax.axhline(0.75, color="grey", linestyle="--", linewidth=1)
                    plots.save_figure(fig, path)
                    parts.append(
                        _figure(path, "Cohen's kappa per annotator pair (dashed: 0.75, the usual production bar)")
                    )
    return "".join(parts) or _missing("a pairs stage (preference data with judgments)")


def section_reward(stages: dict[str, Path], figures: Path) -> str:
    parts = []
    for name, folder in stages.items():
        summary = _read_json(folder / "summary.json") or {}
        if summary.get("stage") != "reward-eval":
            continue
        parts.append(
            _table(
                [
                    "pairs",
                    "accuracy",
                    "accuracy against gold",
                    "ECE",
                    "mean margin",
                    "length correlation",
                    "prefers the longer response",
                ],
                [
                    [
                        summary.get("pairs"),
                        summary.get("accuracy"),
                        summary.get("gold_accuracy"),
                        summary.get("ece"),
                        summary.get("mean_margin"),
                        summary.get("length_correlation"),
                        summary.get("longer_preferred_share"),
                    ]
                ],
            )
        )
        bins = [b for b in summary.get("reliability", []) if b["count"]]
        if bins:
            path = figures / f"reliability_{name}.png"
            fig, ax = plots.new_figure(5, 4)
            ax.plot([0.5, 1], [0.5, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label="reward model")
            for head_name, head in (summary.get("heads") or {}).items():  # a multi-head model: one curve per head
                head_bins = [b for b in head.get("reliability", []) if b["count"]]
                ax.plot(
                    [b["confidence"] for b in head_bins],
                    [b["accuracy"] for b in head_bins],
                    marker=".",
                    linestyle=":",
                    label=f"head {head_name}",
                )
            for b in bins:
                ax.annotate(
                    str(b["count"]),
                    (b["confidence"], b["accuracy"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
            ax.set_xlabel("confidence max(p, 1-p)")
            ax.set_ylabel("accuracy")
            ax.legend()
            plots.save_figure(fig, path)
            parts.append(
                _figure(
                    path,
                    f"Reliability diagram ({name}); numbers are pairs per bin; ECE "
                    f"{summary.get('ece', float('nan')):.3f}",
                )
            )
        if "length_controlled_accuracy" in summary:
            parts.append(
                _table(
                    [
                        "length-controlled accuracy",
                        "pairs of similar length",
                        "accuracy, chosen shorter",
                        "accuracy, chosen longer",
                    ],
                    [
                        [
                            summary.get("length_controlled_accuracy"),
                            summary.get("length_controlled_pairs"),
                            summary.get("accuracy_chosen_shorter"),
                            summary.get("accuracy_chosen_longer"),
                        ]
                    ],
                )
            )
        top = summary.get("top_words") or {}
        if top.get("positive") or top.get("negative"):
            raise_rows = top.get("positive", [])
            lower_rows = top.get("negative", [])
            rows = [
                [
                    *(raise_rows[i][:2] if i < len(raise_rows) else ["", None]),
                    *(lower_rows[i][:2] if i < len(lower_rows) else ["", None]),
                ]
                for i in range(max(len(raise_rows), len(lower_rows)))
            ]
            parts.append(
                "<p>Words that drive the score (integrated gradients, mean attribution over the audited responses):</p>"
                + _table(["raises the reward", "mean", "lowers the reward", "mean"], rows)
            )
        by_category = summary.get("accuracy_by_category")
        if by_category:
            parts.append(_table(["category", "accuracy"], [[k, v] for k, v in by_category.items()]))
    return "".join(parts) or _missing("a reward eval stage")


def section_training(stages: dict[str, Path], figures: Path) -> str:
    runs = {
        name: _read_jsonl(folder / "metrics.jsonl")
        for name, folder in stages.items()
        if (folder / "metrics.jsonl").is_file()
    }
    runs = {name: rows for name, rows in runs.items() if len(rows) > 1}
    parts = []
    for key, label in CURVES:
        series = {
            name: ([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r])
            for name, rows in runs.items()
        }
        series = {name: xy for name, xy in series.items() if len(xy[0]) > 1}
        if series:
            path = figures / f"curve_{key}.png"
            plots.line_plot(series, path, xlabel="step", ylabel=label, title=label)
            parts.append(_figure(path, f"{label} over training"))
    online = {name: rows for name, rows in runs.items() if rows and "kl" in rows[0] and "reward" in rows[0]}
    for name, rows in online.items():
        if any("gold" in r for r in rows):
            path = figures / f"reward_vs_kl_{name}.png"
            fig, ax = plots.new_figure(6, 4)
            ax.plot(
                [r.get("kl_avg", r["kl"]) for r in rows],
                [r.get("reward_avg", r["reward"]) for r in rows],
                label="proxy reward",
                color=plots.PROXY_COLOR,
            )
            ax2 = ax.twinx()
            ax2.plot(
                [r.get("kl_avg", r["kl"]) for r in rows],
                [r.get("gold_avg", r.get("gold")) for r in rows],
                label="gold",
                color=plots.GOLD_COLOR,
            )
            ax.set_xlabel("KL to reference (rolling mean)")
            ax.set_ylabel("proxy reward", color=plots.PROXY_COLOR)
            ax2.set_ylabel("gold", color=plots.GOLD_COLOR)
            plots.save_figure(fig, path)
            parts.append(_figure(path, f"{name}: proxy reward and gold against KL"))
    return "".join(parts) or _missing("training metrics")


def section_overoptimisation(stages: dict[str, Path], figures: Path) -> str:
    from ..evaluate.overoptimisation import shape_line

    parts = []
    for name, folder in stages.items():
        sweep = _read_json(folder / "sweep.json")
        if sweep and (folder / "sweep.png").is_file():
            fits = sweep.get("fits", {})
            rows = [[k, v.get("alpha"), v.get("beta")] for k, v in fits.items() if isinstance(v, dict)]
            parts.append(
                _figure(folder / "sweep.png", f"best-of-n over-optimisation ({name})")
                + (_table(["fit", "alpha", "beta"], rows) if rows else "")
                + (f"<p>{html.escape(shape_line(sweep))}</p>" if sweep.get("rows") and "gold_best_n" in sweep else "")
            )
    parts += rl_fits(stages, figures)
    return "".join(parts) or _missing("a bon-sweep stage, or a ppo run with a gold judge")


def rl_fits(stages: dict[str, Path], figures: Path) -> list[str]:
    """Per PPO run that logged gold: both Gao et al. forms fitted to its gold against d = sqrt(KL), plotted."""
    from ..errors import DataError
    from ..evaluate.overoptimisation import rl_fit_from_metrics

    parts = []
    for name, folder in stages.items():
        if (_read_json(folder / "summary.json") or {}).get("stage") != "ppo" or not (
            folder / "metrics.jsonl"
        ).is_file():
            continue
        try:
            fit = rl_fit_from_metrics(folder / "metrics.jsonl")
        except DataError:
            continue  # no gold logged, or too few steps
        path = plots.plot_gao_forms(fit, figures / f"rl_fit_{name}.png", title=f"{name}: gold against sqrt(KL)")
        rows = [
            [label, fit[form]["alpha"], fit[form]["beta"], fit[form]["r2"], fit[form]["kl_peak"]]
            for form, label in (("rl", "RL form d(alpha - beta log d)"), ("bon", "best-of-n form d(alpha - beta d)"))
        ]
        parts.append(
            _figure(path, f"{name}: Gao et al. forms fitted to the gold of its training batches against d = sqrt(KL)")
            + _table(["fit", "alpha", "beta", "R^2", "KL at the fitted peak"], rows)
        )
    return parts


def section_frontier(run_dir: Path, stages: dict[str, Path]) -> str | None:
    """The reward/KL frontier (rlhfkit frontier): its plot and points; None when no frontier stage ran here."""
    for folder in [run_dir, *stages.values()]:
        frontier = _read_json(folder / "frontier.json")
        if not frontier or not (folder / "frontier.png").is_file():
            continue
        rows = [
            [
                p["method"],
                "" if p["strength"] is None else f"{p['key']} {p['strength']:g}",
                p["kl"],
                p.get("kl_stderr"),
                p.get("gold"),
                p.get("gold_stderr"),
                "yes" if p.get("on_front") else "",
            ]
            for p in frontier["points"]
        ]
        return _figure(
            folder / "frontier.png", "gold against KL to the reference per method; lines join each method's front"
        ) + _table(["method", "strength", "KL", "KL se", "gold", "gold se", "on the front"], rows)
    return None


def _folders(run_dir: Path, stages: dict[str, Path]) -> list[tuple[str, Path]]:
    """The run folder and every stage folder in it, each once, with the name a section shows."""
    seen, out = set(), []
    for name, folder in [(run_dir.name, run_dir), *stages.items()]:
        if folder.resolve() not in seen:
            seen.add(folder.resolve())
            out.append((name, folder))
    return out


def section_heads(stages: dict[str, Path], figures: Path) -> str:
    """Every reward-eval of a multi-head model: each head's metrics against its own objective's labels and gold,
    the correlation between heads, and one reliability diagram per head."""
    parts = []
    for name, folder in stages.items():
        summary = _read_json(folder / "summary.json") or {}
        heads = summary.get("heads") if summary.get("stage") == "reward-eval" else None
        if not heads:
            continue
        parts.append(f"<p>{html.escape(name)}: {len(heads)} heads, each against its own objective's labels.</p>")
        parts.append(
            _table(
                [
                    "head",
                    "pairs",
                    "accuracy",
                    "accuracy against its gold",
                    "ECE",
                    "mean margin",
                    "length correlation",
                    "prefers the longer response",
                ],
                [
                    [
                        head_name,
                        head.get("pairs"),
                        head.get("accuracy"),
                        head.get("gold_accuracy"),
                        head.get("ece"),
                        head.get("mean_margin"),
                        head.get("length_correlation"),
                        head.get("longer_preferred_share"),
                    ]
                    for head_name, head in heads.items()
                ],
            )
        )
        correlation = summary.get("head_correlation") or {}
        if correlation:
            parts.append(
                "<p>Correlation between heads (Pearson, rewards of every response):</p>"
                + _table(["heads", "correlation"], [[k.replace("~", " ~ "), v] for k, v in correlation.items()])
            )
        path = figures / f"heads_reliability_{name}.png"
        fig, axes = plots.new_figures(len(heads), 4.0 * len(heads), 3.6)
        for ax, (head_name, head) in zip(axes, heads.items()):
            bins = [b for b in head.get("reliability", []) if b["count"]]
            ax.plot([0.5, 1], [0.5, 1], color="grey", linestyle="--", linewidth=1)
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o")
            ece = head.get("ece")
            ax.set_title(f"head {head_name}" + (f": ECE {ece:.3f}" if ece is not None else ""))
            ax.set_xlabel("confidence max(p, 1-p)")
            ax.set_ylabel("accuracy")
        plots.save_figure(fig, path)
        parts.append(_figure(path, f"Reliability diagram per head ({name})"))
    return "".join(parts) or _missing("a reward eval of a multi-head reward model (pairs with per-objective labels)")


def section_shift(run_dir: Path, stages: dict[str, Path]) -> str:
    """rlhfkit shift: the verdict, every figure on each set, each check, and the farthest new prompts."""
    parts = []
    for name, folder in _folders(run_dir, stages):
        shift = _read_json(folder / "shift.json")
        if not shift or "sets" not in shift:  # a flywheel round's shift.json has checks only
            continue
        verdict = '<span class="fail">SHIFTED</span>' if shift["shifted"] else '<span class="pass">no shift</span>'
        parts.append(f"<p>{html.escape(name)}: {verdict} (against the {html.escape(shift['compared_with'])})</p>")
        sets = shift["sets"]
        measures = ["prompts", "pairs", "distance", "rm_accuracy", "confidence", "disagreement", "gold_agreement"]
        parts.append(
            _table(
                ["measure", *sets],
                [[m, *(sets[s].get(m) for s in sets)] for m in measures if any(m in sets[s] for s in sets)],
            )
        )
        word = {True: "SHIFT", False: "ok", None: "n/a"}
        body = _table(
            ["check", "verdict", "detail"], [[c["check"], word[c["shifted"]], c["detail"]] for c in shift["checks"]]
        )
        parts.append(
            body.replace("<td>SHIFT</td>", '<td class="fail">SHIFT</td>').replace(
                "<td>ok</td>", '<td class="pass">ok</td>'
            )
        )
        if shift.get("farthest"):
            parts.append(
                "<p>The new prompts farthest from the training ones (cosine distance to the nearest):</p>"
                + _table(["prompt", "distance"], [[r["prompt"], r["distance"]] for r in shift["farthest"][:10]])
            )
        parts += [f'<p class="muted">{html.escape(note)}</p>' for note in shift.get("notes", [])]
    return "".join(parts) or _missing("a shift monitor result (rlhfkit shift)")


def section_coverage(run_dir: Path, stages: dict[str, Path]) -> str:
    """rlhfkit coverage: coverage before and after the picks, and the uncovered clusters."""
    parts = []
    for name, folder in _folders(run_dir, stages):
        cov = _read_json(folder / "coverage.json")
        if not cov or cov.get("stage") != "coverage":
            continue
        parts.append(
            _table(
                [
                    "run",
                    "prompts",
                    "reference prompts",
                    "threshold",
                    "coverage",
                    "pool",
                    "picked",
                    "coverage after",
                    "target",
                    "reached",
                ],
                [
                    [
                        name,
                        cov["prompts"],
                        cov["reference"],
                        cov["threshold"],
                        cov["coverage"],
                        cov["pool"],
                        cov["picked"],
                        cov["coverage_after"],
                        cov["target"],
                        "yes" if cov["reached_target"] else "no",
                    ]
                ],
            )
        )
        if cov.get("uncovered_clusters"):
            parts.append(
                "<p>Uncovered reference prompts, clustered:</p>"
                + _table(
                    ["size", "nearest the centre", "more of it"],
                    [[c["size"], c["representative"], " | ".join(c["examples"])] for c in cov["uncovered_clusters"]],
                )
            )
    return "".join(parts) or _missing("a coverage result (rlhfkit coverage)")


def _proxy_label(specs: list[dict]) -> tuple[str, bool]:
    """(how a rewards list reads, whether one of its sources is a reward-model ensemble)."""
    from ..scoring import ensemble_members, is_ensemble

    words, ensemble = [], False
    for spec in specs:
        weight = "" if spec.get("weight", 1.0) == 1.0 else f"{spec['weight']:g} x "
        if spec.get("model"):
            model = Path(spec["model"])
            if model.is_dir() and is_ensemble(model):
                ensemble = True
                method = spec.get("ensemble_method", "mean")
                coef = f" {spec.get('ensemble_coef', 0.5):g}" if method == "uwo" else ""
                words.append(f"{weight}ensemble of {len(ensemble_members(model))} ({method}{coef})")
            else:
                words.append(f"{weight}reward model")
        else:
            words.append(f"{weight}{spec.get('function')}")
    return " + ".join(words), ensemble


def section_ensemble(stages: dict[str, Path]) -> str:
    """Gold under over-optimisation with a single reward model against an ensemble: every bon-sweep and online run
    of the folder with its proxy, when one of them scores with an ensemble; and each audited ensemble's members."""
    import yaml

    rows, any_ensemble, members = [], False, []
    for name, folder in stages.items():
        sweep = _read_json(folder / "sweep.json")
        summary = _read_json(folder / "summary.json") or {}
        if sweep and sweep.get("stage") == "bon-sweep":
            label, ensemble = _proxy_label(sweep.get("rewards", []))
            last = sweep["rows"][-1]
            best = next(r for r in sweep["rows"] if r["n"] == sweep["gold_best_n"])
            rows.append(
                [name, "best-of-n", label, f"n = {last['n']}", last["gold"], f"n = {best['n']}: {best['gold']:.4g}"]
            )
        elif "final" in summary and (folder / "config.yaml").is_file():
            specs = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("rewards") or []
            label, ensemble = _proxy_label(specs)
            final = summary["final"]
            rows.append([name, summary.get("stage"), label, f"step {final.get('step')}", final.get("gold_avg"), ""])
        elif summary.get("stage") == "reward-eval" and summary.get("ensemble"):
            ens = summary["ensemble"]
            members += [[name, m["name"], m["accuracy"], m["ece"]] for m in ens["members"]]
            members.append([name, f"ensemble ({ens['method']})", summary.get("accuracy"), summary.get("ece")])
            ensemble = True
        else:
            continue
        any_ensemble = any_ensemble or ensemble
    if not any_ensemble:
        return _missing("a bon-sweep, online run or reward eval with a reward-model ensemble (reward train ensemble=K)")
    parts = []
    if rows:
        parts.append(
            "<p>Gold at the end of each run: the largest n of a best-of-n sweep, the last window of an online run.</p>"
            + _table(["run", "kind", "proxy", "at", "gold", "gold at its best n"], rows)
        )
    if members:
        parts.append(_table(["reward eval", "member", "accuracy", "ECE"], members))
    return "".join(parts)


def section_pareto(run_dir: Path, stages: dict[str, Path]) -> str:
    """rlhfkit pareto: the front's plot and every weighting's point, dominated or not."""
    parts = []
    for name, folder in _folders(run_dir, stages):
        result = _read_json(folder / "pareto.json")
        if not result or result.get("stage") != "pareto":
            continue
        names = result["objectives"]
        rows = [
            [
                " / ".join(f"{w:.2f}" for w in p["weights"]),
                *(p["gold"][n] for n in names),
                *(p["proxy"][n] for n in names),
                p["words"],
                "on the front" if p["on_front"] else "dominated",
            ]
            for p in result["points"]
        ]
        policy = result["policy"]
        rows.append(
            [
                "the policy itself",
                *(policy["gold"][n] for n in names),
                *(policy["proxy"][n] for n in names),
                policy["words"],
                "",
            ]
        )
        method = "best-of-" + str(result["n"]) if result["method"] == "bon" else "a short GRPO run"
        if (folder / "pareto.png").is_file():
            parts.append(
                _figure(folder / "pareto.png", f"{name}: gold per objective, {method} per weighting; crosses dominated")
            )
        parts.append(
            _table(
                [f"weights ({' / '.join(names)})", *(f"gold {n}" for n in names), *(f"score {n}" for n in names)]
                + ["words", "front"],
                rows,
            ).replace("<td>dominated</td>", '<td class="muted">dominated</td>')
        )
    return "".join(parts) or _missing("a Pareto sweep (rlhfkit pareto)")


def section_detectors(stages: dict[str, Path]) -> str:
    from ..evaluate.detectors import eval_detectors, load_metrics, run_detectors

    rows = []
    for name, folder in stages.items():
        metrics = folder / "metrics.jsonl"
        first = _read_jsonl(metrics)[:1]
        if first and "kl" in first[0] and "reward" in first[0]:
            for verdict in run_detectors(load_metrics(metrics)):
                rows.append([name, verdict.name, "FIRED" if verdict.fired else "ok", verdict.summary])
    for name, folder in stages.items():
        evaluation = _read_json(folder / "eval.json")
        if isinstance(evaluation, dict):
            baseline = evaluation.get("baseline")
            for model, verdicts in eval_detectors(evaluation).items():
                for verdict in verdicts:
                    run = f"{name}: {model} against {baseline}"
                    rows.append([run, verdict.name, "FIRED" if verdict.fired else "ok", verdict.summary])
    if not rows:
        return _missing("an online RL stage (ppo, grpo, rloo) or an evaluation to judge")
    body = _table(["run", "detector", "verdict", "evidence"], rows)
    return body.replace("<td>FIRED</td>", '<td class="fail">FIRED</td>').replace(
        "<td>ok</td>", '<td class="pass">ok</td>'
    )


def section_gate(run_dir: Path) -> str:
    parts = []
    for path in sorted(run_dir.glob("**/gate.json")):
        gate = json.loads(path.read_text())
        verdict = '<span class="pass">PASS</span>' if gate.get("passed") else '<span class="fail">FAIL</span>'
        parts.append(f"<p>{html.escape(str(gate.get('checkpoint')))}: {verdict}</p>")
        body = _table(
            ["metric", "op", "bound", "measured", "result"],
            [
                [
                    r["metric"],
                    r["op"],
                    r["value"],
                    r["measured"],
                    "PASS" if r["passed"] else f"FAIL {r.get('reason') or ''}",
                ]
                for r in gate["rows"]
            ],
        )
        parts.append(body.replace("<td>PASS</td>", '<td class="pass">PASS</td>'))
    return "".join(parts) or _missing("a gate result (rlhfkit gate)")


def section_samples(run_dir: Path, per_model: int = 6) -> str:
    evals = sorted(run_dir.glob("**/eval.json"))
    if not evals:
        return _missing("an evaluation (rlhfkit eval)")
    parts = []
    for eval_path in evals:
        results = json.loads(eval_path.read_text()).get("results", {})
        keys = [
            k
            for k in (
                "mean_gold",
                "mean_reward",
                "win_rate",
                "kl",
                "mean_length",
                "distinct_2",
                "unsafe_rate",
                "truncated_share",
            )
            if any(k in r for r in results.values())
        ]
        parts.append(_table(["model", *keys], [[name, *[row.get(k) for k in keys]] for name, row in results.items()]))
        samples = _read_jsonl(eval_path.parent / "samples.jsonl")
        by_prompt: dict[str, dict[str, dict]] = {}
        for s in samples:
            by_prompt.setdefault(s["prompt"], {}).setdefault(s["model"], s)
        models = list(results)
        rows = []
        for prompt, answers in list(by_prompt.items())[:per_model]:
            cells = "".join(
                f"<td>{html.escape(answers[m]['response']) if m in answers else ''}"
                + (
                    f"<br><span class='muted'>gold {answers[m]['gold']:.2f}</span>"
                    if m in answers and "gold" in answers[m]
                    else ""
                )
                + "</td>"
                for m in models
            )
            rows.append(f"<tr><td>{html.escape(prompt)}</td>{cells}</tr>")
        head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
        parts.append(f'<table class="samples"><tr><th>prompt</th>{head}</tr>{"".join(rows)}</table>')
    return "".join(parts)


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report.html"
    figures = run_dir / "report_figures"
    stages = stage_dirs(run_dir)
    bodies = {
        "data": section_data(run_dir, stages, figures),
        "reward": section_reward(stages, figures),
        "heads": section_heads(stages, figures),
        "shift": section_shift(run_dir, stages),
        "coverage": section_coverage(run_dir, stages),
        "ensemble": section_ensemble(stages),
        "pareto": section_pareto(run_dir, stages),
        "training": section_training(stages, figures),
        "overoptimisation": section_overoptimisation(stages, figures),
        "frontier": section_frontier(run_dir, stages),
        "detectors": section_detectors(stages),
        "gate": section_gate(run_dir),
        "samples": section_samples(run_dir),
    }
    outline = []
    for key, title in SECTIONS:
        outline.append((key, title))
        outline += [(extra, t) for extra, (t, after) in OPTIONAL_SECTIONS.items() if after == key and bodies[extra]]
    nav = "".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title in outline)
    sections = "".join(
        f'<section id="{key}"><h2>{html.escape(title)}</h2>{bodies[key]}</section>' for key, title in outline
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>rlhfkit report: {html.escape(run_dir.name)}</title>"
        f"<style>{CSS}</style></head><body><h1>rlhfkit report: {html.escape(str(run_dir))}</h1>"
        f"<p class='muted'>{stamp}; stages: "
        f"{html.escape(', '.join(stages) or 'none')}</p><nav>{nav}</nav>{sections}</body></html>"
    )
    atomic_write(out, page)
    return out
