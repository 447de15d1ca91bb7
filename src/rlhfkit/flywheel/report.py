"""flywheel.html: the rounds side by side: gold, the reward model's accuracy on the newest prompts, how much of the
label window each round's labels are, the shift verdicts and the gate's decision."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..report import plots


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def shift_word(facts: dict[str, Any]) -> str:
    checks = facts.get("shift", {}).get("checks", [])
    if not checks:
        return "-"
    return "; ".join(
        f"{c['check']}: {'n/a' if c['shifted'] is None else 'SHIFT' if c['shifted'] else 'ok'}" for c in checks
    )


def rows(rounds: list[dict[str, Any]]) -> list[list[str]]:
    table = []
    for facts in rounds:
        decision = "start" if facts["round"] == 0 else "promoted" if facts.get("promoted") else "rolled back"
        table.append(
            [
                str(facts["round"]),
                fmt(facts.get("gold_parent")),
                fmt(facts.get("gold_candidate")),
                fmt(facts.get("win_rate")),
                fmt(facts.get("rm_accuracy_newest")),
                fmt(facts.get("rm_gold_accuracy_newest")),
                fmt(facts.get("new_share")),
                fmt(facts.get("window_pairs")),
                fmt(", ".join(f"{k} {v}" for k, v in (facts.get("labels") or {}).items()) or None),
                html.escape(shift_word(facts)),
                decision,
                fmt(facts.get("current", {}).get("id")),
            ]
        )
    return table


HEADER = [
    "round", "gold (parent)", "gold (candidate)", "win rate", "RM acc. newest", "RM gold acc. newest", "new share of "
    "window", "window pairs", "labels", "shift", "decision", "current #",
]  # fmt: skip


def build_report(root: Path, rounds: list[dict[str, Any]]) -> Path:
    figures = root / "figures"
    done = [r for r in rounds if r.get("round", 0) >= 1]
    xs = [r["round"] for r in done]

    def series(key: str) -> tuple[list, list]:
        points = [(r["round"], r[key]) for r in done if r.get(key) is not None]
        return [x for x, _ in points], [y for _, y in points]

    parts = []
    if xs:
        shift_series: dict[str, tuple[list, list]] = {}
        for r in done:
            for c in r.get("shift", {}).get("checks", []):
                for key, side in (("value", "newest"), ("reference", "older")):
                    if c.get(key) is not None:
                        xs_, ys_ = shift_series.setdefault(f"{c['check']} ({side})", ([], []))
                        xs_.append(r["round"])
                        ys_.append(c[key])
        figures_made = [
            ("gold", {"candidate": series("gold_candidate"), "parent": series("gold_parent")}, "mean gold",
             "Mean gold of the parent and of the candidate, per round"),
            ("rm_newest", {"accuracy (labels)": series("rm_accuracy_newest"),
                           "accuracy (gold)": series("rm_gold_accuracy_newest")}, "accuracy",
             "Retrained reward model's accuracy on the newest round's held-out pairs"),
            ("new_share", {"new share": series("new_share")}, "share of the window",
             "Share of the reward model's training window that is the round's own labels"),
            ("shift", shift_series, "measure",
             "Shift checks: the production reward model's accuracy (newest vs older pairs), prompt embedding distance"),
        ]  # fmt: skip
        for name, lines, ylabel, caption in figures_made:
            if not any(points[0] for points in lines.values()):
                continue
            figure, ax = plots.new_figure(6.0, 3.8)
            for label, (px, py) in lines.items():
                ax.plot(px, py, marker="o", label=label)
            ax.set_xticks(xs)
            ax.set_xlabel("round")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend()
            plots.save_figure(figure, figures / f"{name}.png")
            parts.append(
                f'<figure><img alt="{html.escape(caption)}" src="{plots.png_base64(figures / f"{name}.png")}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows(rounds))
    details = "".join(
        f"<li>round {r['round']}: {html.escape(c['check'])}: {html.escape(c['detail'])}</li>"
        for r in done
        for c in r.get("shift", {}).get("checks", [])
    )
    title = f"rlhfkit flywheel: {html.escape(str(root))}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}figure{{display:inline-block;margin:1em}}
img{{max-width:520px}}</style></head><body>
<h1>Flywheel: {html.escape(str(root))}</h1>
<p>Each round: gateway traffic and feedback in the window, pairs sampled from the current policy and labelled,
the reward model retrained on the rolling window of labels and audited, a shift check, the policy optimised,
evaluated and gated. Registry: {html.escape(str(root / "registry.sqlite"))}.</p>
<table><tr>{head}</tr>{body}</table>
{"".join(parts)}
<h2>Shift checks</h2><ul>{details or "<li>none yet</li>"}</ul>
</body></html>"""
    out = root / "flywheel.html"
    atomic_write(out, page)
    return out
