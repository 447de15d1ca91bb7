"""The whole first loop on the embedded default: build -> SFT -> pairs -> reward model -> reward eval -> DPO -> eval
-> acceptance gate -> HTML report."""

from __future__ import annotations

from pathlib import Path

from ..config import DemoConfig, DPOConfig, EvalConfig, GateConfig, PairsConfig, RewardEvalConfig, RewardTrainConfig, SFTConfig, build_config, save_config
from ..train import console, write_json


def stage_configs(config: DemoConfig) -> dict:
    """Every stage's config, validated before any work starts (a bad override fails here, not an hour in)."""
    root = Path(config.output_dir)
    sft_model = str(root / "sft" / "model")
    pairs_file = str(root / "pairs" / "pairs.jsonl")
    rm_dir = str(root / "reward" / "model")

    def make(cls, name: str, defaults: dict, overrides: dict):
        return build_config(cls, {**defaults, **overrides}, source=f"demo config, {name}")

    return {
        "sft": make(SFTConfig, "sft", {"output_dir": str(root / "sft"), "epochs": 1.0, "batch_size": 32, "lr": 5e-4}, config.sft),
        "pairs": make(PairsConfig, "pairs", {"model": sft_model, "output_dir": str(root / "pairs"), "num_prompts": config.num_pairs_prompts}, config.pairs),
        "reward": make(RewardTrainConfig, "reward", {"data": pairs_file, "output_dir": str(root / "reward"), "epochs": 3.0, "batch_size": 32,
                                                      "lr": 3e-4, "eval_every": 25, "patience": 4}, config.reward),
        "reward_eval": RewardEvalConfig(model=rm_dir, data=str(root / "reward" / "val_pairs.jsonl"), output_dir=str(root / "reward_eval")),
        "dpo": make(DPOConfig, "dpo", {"model": sft_model, "data": pairs_file, "output_dir": str(root / "dpo"), "epochs": 2.0, "batch_size": 32,
                                       "lr": 1e-4, "beta": 0.1, "eval_every": 50}, config.dpo),
        "gate": make(GateConfig, "gate", {"thresholds": config.gate, "metrics": str(root / "eval" / "eval.json"), "model_name": "dpo",
                                          "registry": str(root), "output_dir": str(root / "gate")}, {}),
        "eval": make(EvalConfig, "eval", {"models": {"sft": sft_model, "dpo": str(root / "dpo" / "model")}, "reward_model": rm_dir,
                                          "output_dir": str(root / "eval"), "samples_per_prompt": 8}, config.eval),
    }


def run(config: DemoConfig) -> dict:
    from ..demo.build import ensure_default
    from ..evaluate import policy
    from ..report.html import build_report
    from . import dpo, gate, pairs, reward, sft

    configs = stage_configs(config)
    root = Path(config.output_dir)
    save_config(config, root)
    task = ensure_default()
    console.rule("1/7 supervised fine-tuning")
    sft.run(configs["sft"])
    console.rule("2/7 candidate pairs labelled by the simulated panel")
    pairs_summary = pairs.run(configs["pairs"])
    console.rule("3/7 reward model")
    reward_summary = reward.train(configs["reward"])
    console.rule("4/7 reward-model evaluation on held-out pairs")
    audit = reward.evaluate(configs["reward_eval"])
    console.rule("5/7 DPO")
    dpo.run(configs["dpo"])
    console.rule("6/7 SFT vs DPO on held-out prompts")
    results = policy.run(configs["eval"])
    sft_row, dpo_row = results["sft"], results["dpo"]
    summary = {
        "default_task": str(task.root),
        "pairs": pairs_summary["pairs"], "panel_matches_gold": pairs_summary["panel_matches_gold"],
        "reward_val_accuracy": reward_summary["best_val_accuracy"],
        "reward_gold_accuracy": audit.get("gold_accuracy"), "reward_ece": audit["ece"],
        "gold_sft": sft_row["mean_gold"], "gold_dpo": dpo_row["mean_gold"], "gold_gain": dpo_row["mean_gold"] - sft_row["mean_gold"],
        "distinct2_ratio": dpo_row["distinct_2"] / sft_row["distinct_2"] if sft_row["distinct_2"] else None,
        "results": results,
    }
    console.rule("7/7 acceptance gate and report")
    gate_result = gate.run(configs["gate"], str(root / "dpo" / "model"))
    summary["gate_passed"] = gate_result.passed
    report_path = build_report(root)
    summary["report"] = str(report_path)
    write_json(root / "demo_summary.json", summary)
    console.rule("demo finished")
    console.print(f"reward model: accuracy against gold {summary['reward_gold_accuracy']:.3f} on held-out pairs, ECE {summary['reward_ece']:.3f}")
    console.print(f"DPO vs SFT: mean gold {summary['gold_sft']:.3f} -> {summary['gold_dpo']:.3f} (gain {summary['gold_gain']:+.3f}), "
                  f"distinct-2 ratio {summary['distinct2_ratio']:.2f}")
    console.print(f"gate on the DPO model: {'PASSED' if gate_result.passed else 'FAILED'}; registry {root / 'registry.sqlite'}")
    console.print(f"report: {report_path}")
    console.print(f"run folder: {root} (table in {root / 'eval' / 'eval.md'}, summary in {root / 'demo_summary.json'})")
    return summary
