"""Reward/KL frontier (Rafailov et al. 2023, figure 2, on our task): how much gold each method buys per nat of KL.

For every method and strength (DPO beta, PPO kl_coef, GRPO kl_coef) one policy is trained from the same SFT model,
then every policy is evaluated the same way (evaluate.policy): samples on the held-out prompts, mean gold, and the
sampled KL to the SFT model, sum over response tokens of log pi(y_t) - log pi_ref(y_t) on the policy's own samples,
so the KL of a DPO policy and of a PPO policy are one quantity. The training runs and the evaluation are the stages
of a pipeline in OUTPUT_DIR (pipeline.yaml), so the runner's cache reuses every policy whose config and inputs are
unchanged, and an interrupted frontier resumes. A method's frontier is its Pareto front: the points that no other
point of the method beats on both gold (higher) and KL (lower).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from ..atomic import write_json
from ..config import FRONTIER_STRENGTH, FrontierConfig, save_config
from ..console import console
from ..errors import DataError
from ..evaluate.overoptimisation import describe, rl_fit_from_metrics

Z_95 = 1.96
REFERENCE = "sft"  # the evaluation's name of the starting model


def point_name(method: str, strength: float) -> str:
    """A policy's stage name and folder: dpo-beta-0_1, ppo-kl_coef-0_05 (pipeline names take no dots)."""
    return f"{method}-{FRONTIER_STRENGTH[method]}-{strength:g}".replace(".", "_")


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both gold (higher) and KL (lower), in KL order."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p["kl"], -p["gold"])):
        if p["gold"] > best:
            front.append(p)
            best = p["gold"]
    return front


def pipeline_spec(config: FrontierConfig) -> dict:
    """The frontier as a pipeline: one training stage per (method, strength), then one evaluation of them all."""
    stages, models = [], {REFERENCE: config.model}
    rewards = [spec.model_dump(exclude_none=True) for spec in config.rewards]
    for method in config.methods:
        for strength in config.strengths[method]:
            name = point_name(method, strength)
            inputs = {"data": config.data} if method == "dpo" else {"rewards": rewards}
            values = {
                "seed": config.seed,
                "threads": config.threads,
                **getattr(config, method),
                "model": config.model,
                **inputs,
                FRONTIER_STRENGTH[method]: strength,
            }
            stages.append({"name": name, "stage": method, "config": values})
            models[name] = f"${{{name}}}/model"
    reward_model = next((spec.model for spec in config.rewards if spec.model), None)
    evaluation = {
        "threads": config.threads,
        **({"reward_model": reward_model} if reward_model else {}),
        **config.eval,
        "models": models,
        "reference": config.model,
    }
    stages.append({"name": "eval", "stage": "eval", "config": evaluation})
    return {"output_dir": config.output_dir, "stages": stages}


def run(config: FrontierConfig) -> dict:
    from .. import pipeline
    from ..report.plots import plot_frontier, plot_gao_forms

    started = time.time()
    out = Path(config.output_dir)
    save_config(config, out)
    spec_path = out / "pipeline.yaml"
    spec_path.write_text(yaml.safe_dump(pipeline_spec(config), sort_keys=False))
    plan = pipeline.load_pipeline(spec_path)
    if config.force:
        plan.force = [stage.name for stage in plan.stages]
    status = {row["name"]: row for row in pipeline.run(plan)["stages"]}
    results = json.loads((out / "eval" / "eval.json").read_text())["results"]
    points = [measured(REFERENCE, "reference", None, None, results[REFERENCE])]
    rl_fits = {}
    for method in config.methods:
        for strength in config.strengths[method]:
            name = point_name(method, strength)
            point = measured(name, method, FRONTIER_STRENGTH[method], strength, results[name])
            point["run_dir"] = str(out / name)
            point["trained"] = status[name]["status"]  # ran, or skipped: reused
            # a reused policy's training time is the one its marker recorded when it ran
            marker = pipeline.read_json(out / name / pipeline.MARKER) or {}
            point["train_seconds"] = marker.get("seconds", status[name]["seconds"])
            if method == "ppo":
                try:
                    rl_fits[name] = rl_fit_from_metrics(out / name / "metrics.jsonl")
                except DataError as exc:
                    console.print(f"no RL fit for {name}: {exc}")
            points.append(point)
    fronts = {
        method: [p["name"] for p in pareto_front([p for p in points if p["method"] == method])]
        for method in config.methods
    }
    for p in points:
        p["on_front"] = p["name"] in fronts.get(p["method"], [])
    plot = plot_frontier(
        points,
        fronts,
        out / "frontier.png",
        title=f"reward/KL frontier: {results[REFERENCE].get('samples')} held-out samples per policy",
    )
    rl_plot = None
    if rl_fits:
        # the run that moved furthest shows the most of the curve
        widest = max(rl_fits, key=lambda name: max(q["kl"] for q in rl_fits[name]["points"]))
        rl_plot = plot_gao_forms(
            rl_fits[widest], out / "rl_fit.png", title=f"Gao et al. forms fitted to {widest}'s training batches"
        )
    result = {
        "stage": "frontier",
        "model": config.model,
        "data": config.data,
        "rewards": [spec.model_dump(exclude_none=True) for spec in config.rewards],
        "methods": config.methods,
        "strengths": {m: config.strengths[m] for m in config.methods},
        "kl": "sampled k1: mean over held-out samples of sum_t log pi(y_t) - log pi_ref(y_t), reference = model",
        "eval": str(out / "eval" / "eval.json"),
        "points": points,
        "fronts": fronts,
        "rl_fits": {
            name: {"rl": fit["rl"], "bon": fit["bon"], "metrics": fit["metrics"]} for name, fit in rl_fits.items()
        },
        "plot": str(plot),
        "rl_plot": str(rl_plot) if rl_plot else None,
        "seconds": round(time.time() - started, 1),
    }
    table = format_table(points, rl_fits)
    (out / "frontier.md").write_text(
        f"# Reward/KL frontier: {config.model}\n\n{table}\n\n![frontier](frontier.png)\n"
        + ("\n![RL fit](rl_fit.png)\n" if rl_plot else "")
    )
    write_json(out / "frontier.json", result)
    console.print(table)
    console.print(f"frontier: {out / 'frontier.json'}, {out / 'frontier.md'}, {plot}")
    return result


def measured(name: str, method: str, key: str | None, strength: float | None, row: dict) -> dict:
    """A frontier point from its evaluation row; the KL's standard error from its 95% interval."""
    low, high = row.get("kl_ci", [row["kl"], row["kl"]])
    return {
        "name": name,
        "method": method,
        "key": key,
        "strength": strength,
        "kl": row["kl"],
        "kl_stderr": (high - low) / (2 * Z_95),
        "gold": row.get("mean_gold"),
        "gold_stderr": row.get("gold_stderr"),
        "reward": row.get("mean_reward"),
        "words": row.get("mean_length"),
        "distinct_2": row.get("distinct_2"),
        "samples": row.get("samples"),
        "model_dir": row.get("model"),
    }


def format_table(points: list[dict], rl_fits: dict[str, dict] | None = None) -> str:
    def number(value, digits: int = 3) -> str:
        return "-" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000"

    lines = [
        "| method | strength | KL to reference ± se | gold ± se | proxy reward | words | distinct-2 | on the front "
        "| policy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        strength = "-" if p["strength"] is None else f"{p['key']} {p['strength']:g}"
        policy = "reference" if p["method"] == "reference" else f"{p['trained']} ({p['train_seconds']:.0f} s)"
        policy = policy.replace("skipped", "reused")
        lines.append(
            f"| {p['method']} | {strength} | {number(p['kl'])} ± {number(p['kl_stderr'])} | "
            f"{number(p['gold'])} ± {number(p['gold_stderr'])} | {number(p['reward'])} | {number(p['words'], 1)} | "
            f"{number(p['distinct_2'])} | {'yes' if p.get('on_front') else ''} | {policy} |"
        )
    lines += ["", "KL: sampled, per response, on the held-out prompts; se: standard error over the samples."]
    for name, fit in (rl_fits or {}).items():
        lines.append(f"- {name}, gold of its training batches against d = sqrt(KL): {describe(fit['rl'])}")
        lines.append(f"  - best-of-n form on the same points: {describe(fit['bon'])}")
    return "\n".join(lines)
