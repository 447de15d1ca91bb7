"""Active vs random selection of pairs to label, on the default task: `python bench/active_selection.py` prints a
JSON summary and writes it to OUT/summary-METHODS.json (OUT: --out, default runs/active; a stage run already
finished there is reused, so a second call with other --methods adds to the first).

For each seed: the panel labels a seed set of pairs; an ensemble of K reward models trains on it; from a pool of
candidate pairs `rlhfkit pairs` keeps B of them, either those the ensemble is least sure of (selection=disagreement)
or B at random (selection=random, the same pool and budget); the panel labels only the kept ones; a reward model
trains on seed + kept; its accuracy against gold on held-out pairs is compared with the seed-only model's. Accuracy
per label = (accuracy - seed accuracy) / B. Every step is a stage run with its config saved under OUT, so any row can
be rerun with the CLI (`rlhfkit pairs --config OUT/.../config.yaml`).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from rlhfkit.config import PairsConfig, RewardEvalConfig, RewardTrainConfig
from rlhfkit.data.records import read_jsonl
from rlhfkit.resolve import resolve_prompts
from rlhfkit.stages import pairs, reward


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines))
    return path


def done(out: Path) -> dict | None:
    """A stage run finished by an earlier call of this script (its summary.json): reused, not run again."""
    return json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None


def run_pairs(config: PairsConfig) -> dict:
    return done(Path(config.output_dir)) or pairs.run(config)


def train_and_score(data: Path, out: Path, test: Path, args, **extra) -> float:
    if (out / "eval" / "summary.json").is_file():
        return done(out / "eval")["gold_accuracy"]
    if done(out) and extra.get("ensemble", 1) > 1:
        return float("nan")
    reward.train(
        RewardTrainConfig(
            data=str(data),
            output_dir=str(out),
            epochs=args.epochs,
            batch_size=16,
            lr=3e-4,
            val_fraction=0.1,
            eval_every=10,
            patience=0,
            seed=args.seed_base,
            threads=args.threads,
            **extra,
        )
    )
    if extra.get("ensemble", 1) > 1:
        return float("nan")
    summary = reward.evaluate(
        RewardEvalConfig(
            model=str(out / "model"), data=str(test), output_dir=str(out / "eval"), attributions=0, threads=args.threads
        )
    )
    return summary["gold_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/active")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. SEEDS-1")
    parser.add_argument("--first-seed", type=int, default=0, help="start at this seed (to run seeds in parallel)")
    parser.add_argument("--seed-pairs", type=int, default=32, help="pairs labelled before any selection")
    parser.add_argument("--pool", type=int, default=384, help="candidate prompts (one pair each) to select from")
    parser.add_argument("--budgets", default="32,128", help="pairs selected and labelled, comma-separated")
    parser.add_argument("--members", type=int, default=3, help="ensemble members (K)")
    parser.add_argument("--test", type=int, default=600, help="held-out prompts for the gold accuracy")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed-base", type=int, default=0, help="reward-model training seed")
    parser.add_argument(
        "--methods",
        default="disagreement,disagreement-sign,random",
        help="selections to compare: disagreement (selection_measure std), disagreement-sign (sign), random",
    )
    args = parser.parse_args()
    out = Path(args.out)
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = args.methods.split(",")

    # the held-out pairs: the last --test prompts of the default training prompts, which no seed set or pool draws
    prompt_lines = resolve_prompts("default").read_text().splitlines()
    prompt_lines, test_lines = prompt_lines[: -args.test], prompt_lines[-args.test :]
    test = out / "test"
    test_prompts = write_lines(out / "test_prompts.jsonl", test_lines)
    run_pairs(PairsConfig(prompts=str(test_prompts), output_dir=str(test), seed=1000, threads=args.threads))
    rows = []
    for seed in range(args.first_seed, args.seeds):
        run = out / f"seed-{seed}"
        lines = random.Random(seed).sample(prompt_lines, args.seed_pairs + args.pool)
        seed_prompts = write_lines(run / "seed_prompts.jsonl", lines[: args.seed_pairs])
        pool_prompts = write_lines(run / "pool_prompts.jsonl", lines[args.seed_pairs :])
        run_pairs(PairsConfig(prompts=str(seed_prompts), output_dir=str(run / "seed"), seed=seed, threads=args.threads))
        seed_pairs = run / "seed" / "pairs.jsonl"
        train_and_score(seed_pairs, run / "ensemble", test / "pairs.jsonl", args, ensemble=args.members)
        row = {"seed": seed, "seed_labels": len(read_jsonl_list(seed_pairs))}
        row["seed_accuracy"] = train_and_score(seed_pairs, run / "seed-rm", test / "pairs.jsonl", args)
        for budget in budgets:
            for method in methods:
                name = f"{method}-{budget}"
                picked = run_pairs(
                    PairsConfig(
                        prompts=str(pool_prompts),
                        output_dir=str(run / name),
                        seed=seed,
                        threads=args.threads,
                        selection=method.split("-")[0],
                        budget=budget,
                        selection_measure="sign" if method.endswith("-sign") else "std",
                        selection_model=str(run / "ensemble" / "model") if method != "random" else None,
                    )
                )
                both = write_lines(
                    run / name / "seed_plus_selected.jsonl",
                    renamed(seed_pairs, "seed") + renamed(run / name / "pairs.jsonl", "pool"),
                )
                accuracy = train_and_score(both, run / f"{name}-rm", test / "pairs.jsonl", args)
                row[name] = {
                    "accuracy": accuracy,
                    "per_label": (accuracy - row["seed_accuracy"]) / budget,
                    "panel_matches_gold": picked["panel_matches_gold"],
                    **{k: v for k, v in picked["selection"].items() if "disagreement" in k},
                }
        rows.append(row)
        print(json.dumps(row), flush=True)

    def mean(values):
        values = list(values)
        return {"mean": statistics.mean(values), "sd": statistics.pstdev(values) if len(values) > 1 else 0.0}

    table = {"seed_accuracy": mean(r["seed_accuracy"] for r in rows)}
    for budget in budgets:
        for method in methods:
            name = f"{method}-{budget}"
            table[name] = {
                "accuracy": mean(r[name]["accuracy"] for r in rows),
                "per_label": mean(r[name]["per_label"] for r in rows),
                "panel_matches_gold": mean(r[name]["panel_matches_gold"] for r in rows),
            }
    summary = {"settings": vars(args), "test_pairs": str(test / "pairs.jsonl"), "rows": rows, "table": table}
    (out / f"summary-{'-'.join(methods)}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(table, indent=2))


def read_jsonl_list(path: Path) -> list:
    return list(read_jsonl(path))


def renamed(path: Path, prefix: str) -> list[str]:
    """The pairs of a `pairs` run with their ids prefixed: two runs both number their pairs pair-0, pair-1, ..."""
    return [json.dumps({**row, "id": f"{prefix}-{row['id']}"}) for _, row in read_jsonl(path)]


if __name__ == "__main__":
    main()
