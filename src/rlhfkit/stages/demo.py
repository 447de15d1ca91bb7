"""`rlhfkit demo`: the whole first loop on the embedded default, as the pipeline file shipped with the package
(demo/pipeline.yaml: SFT -> pairs -> reward model -> reward eval -> DPO and PPO -> best-of-n sweep -> eval of SFT,
PPO and DPO -> acceptance gate), run by the pipeline runner (cached, resumable) and ending with the HTML report (its
detector verdicts over the PPO run and over each evaluated model), the gate verdict and a one-screen summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import pipeline as runner
from ..atomic import write_json
from ..console import console

PIPELINE = Path(__file__).resolve().parent.parent / "demo" / "pipeline.yaml"


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def summarize(root: Path, result: dict[str, Any], task_root: str) -> dict[str, Any]:
    """The demo's headline numbers, read back from what the stages wrote."""
    pairs, reward, audit = (
        read(root / "pairs" / "summary.json"),
        read(root / "reward" / "summary.json"),
        read(root / "reward_eval" / "summary.json"),
    )
    evaluation = read(root / "eval" / "eval.json")
    results = evaluation.get("results", {})
    sft_row, dpo_row = results.get("sft", {}), results.get("dpo", {})
    sweep, length_sweep = read(root / "bon_sweep" / "sweep.json"), read(root / "bon_sweep_length" / "sweep.json")
    gate = next((row for row in result["stages"] if row["stage"] == "gate"), {})
    gold_sft, gold_dpo = sft_row.get("mean_gold"), dpo_row.get("mean_gold")
    return {
        "default_task": task_root,
        "pipeline": str(PIPELINE),
        "pairs": pairs.get("pairs"),
        "panel_matches_gold": pairs.get("panel_matches_gold"),
        "reward_val_accuracy": reward.get("best_val_accuracy"),
        "reward_gold_accuracy": audit.get("gold_accuracy"),
        "reward_ece": audit.get("ece"),
        "gold_sft": gold_sft,
        "gold_dpo": gold_dpo,
        "gold_gain": gold_dpo - gold_sft if gold_sft is not None and gold_dpo is not None else None,
        "gold_ppo": results.get("ppo", {}).get("mean_gold"),
        "bon_gold_best_n": sweep.get("gold_best_n"),
        "bon_gold": {row["n"]: row["gold"] for row in sweep.get("rows", [])},
        "bon_length_gold": {row["n"]: row["gold"] for row in length_sweep.get("rows", [])},
        "bon_length_gold_best_n": length_sweep.get("gold_best_n"),
        "bon_length_peaks_and_falls": length_sweep.get("gold_peaks_and_falls"),
        "detectors_fired": fired_detectors(root, evaluation),
        "distinct2_ratio": dpo_row["distinct_2"] / sft_row["distinct_2"]
        if sft_row.get("distinct_2") and "distinct_2" in dpo_row
        else None,
        "gate_passed": gate.get("passed"),
        "report": result.get("report"),
        "stages": {row["name"]: row["status"] for row in result["stages"]},
        "results": results,
    }


def fired_detectors(root: Path, evaluation: dict[str, Any]) -> dict[str, list[str]]:
    """The detectors that fired over the PPO run's metrics and over each evaluated model against the SFT model."""
    from ..evaluate.detectors import eval_detectors, load_metrics, run_detectors

    fired = {}
    if (root / "ppo" / "metrics.jsonl").is_file():
        fired["ppo"] = [v.name for v in run_detectors(load_metrics(root / "ppo" / "metrics.jsonl")) if v.fired]
    for model, verdicts in eval_detectors(evaluation).items():
        fired[f"eval {model}"] = [v.name for v in verdicts if v.fired]
    return fired


def fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def run(overrides: list[str] | dict | None = None, force: Sequence[str] = (), dry_run: bool = False) -> dict[str, Any]:
    """Run the packaged demo pipeline with `NAME.KEY=VALUE` overrides; returns the summary (or the dry-run plan)."""
    from ..demo.build import ensure_default

    pipeline = runner.load_pipeline(PIPELINE, overrides, force=force)  # every override is checked before any work
    if dry_run:
        return runner.run(pipeline, dry_run=True)
    task = ensure_default()
    result = runner.run(pipeline)
    root = pipeline.output_dir
    summary = summarize(root, result, str(task.root))
    write_json(root / "demo_summary.json", summary)
    console.rule("demo finished")
    console.print(
        f"reward model: accuracy against gold {fmt(summary['reward_gold_accuracy'])} on held-out pairs, ECE "
        f"{fmt(summary['reward_ece'])}"
    )
    console.print(
        f"DPO vs SFT: mean gold {fmt(summary['gold_sft'])} -> {fmt(summary['gold_dpo'])} (gain "
        f"{fmt(summary['gold_gain'], '+.3f')}), "
        f"distinct-2 ratio {fmt(summary['distinct2_ratio'], '.2f')}"
    )
    console.print(f"PPO (KL-penalised): mean gold {fmt(summary['gold_ppo'])}")
    for key, proxy in (("bon", "the reward model"), ("bon_length", "the reward model + 0.05 per word")):
        if summary[f"{key}_gold"]:
            curve = ", ".join(f"{n}: {fmt(g)}" for n, g in summary[f"{key}_gold"].items())
            console.print(f"best-of-n by {proxy}, gold by n (highest at n={summary[f'{key}_gold_best_n']}): {curve}")
    flagged = {run: names for run, names in summary["detectors_fired"].items() if names}
    console.print(
        "detectors: "
        + ("; ".join(f"{run}: {', '.join(names)} FIRED" for run, names in flagged.items()) or "none fired")
    )
    verdict = {True: "PASSED", False: "FAILED", None: "not reached"}[summary["gate_passed"]]
    console.print(f"gate on the DPO model: {verdict}; registry {root / 'registry.sqlite'}")
    console.print(f"report: {summary['report']}")
    console.print(f"run folder: {root} (table in {root / 'eval' / 'eval.md'}, summary in {root / 'demo_summary.json'})")
    return summary
