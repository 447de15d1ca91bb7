"""Label-noise sweep: how a reward model's held-out accuracy falls as a share of its training labels is flipped.

The pairs are split once (reward.split_pairs) into a training part and a held-out part that stays clean and the same
for every rate. For each rate, exactly round(rate * n) training pairs get chosen and rejected swapped (one seeded
order, so a higher rate flips a superset of a lower rate's pairs), a reward model is trained on that file with
reward.train (whose own validation split of the noisy file only picks the early-stopping point), and scored on the
held-out pairs with reward.evaluate: accuracy against the held-out labels, and against gold where the metadata has it.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from ..atomic import write_json
from ..config import NoiseSweepConfig, RewardEvalConfig, RewardTrainConfig, build_config, save_config
from ..console import console
from ..data.records import PreferencePair, load_records, write_jsonl
from . import reward


def flip_labels(pairs: list[PreferencePair], rate: float, seed: int) -> tuple[list[PreferencePair], list[int]]:
    """Swap chosen and rejected (and their gold scores) on exactly round(rate * len(pairs)) pairs; their indices,
    sorted.

    The flipped pairs are the first of one seeded order of all pairs, so for a fixed seed the sets are nested in rate.
    """
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    flipped = sorted(order[: round(rate * len(pairs))])
    out = list(pairs)
    for i in flipped:
        pair = pairs[i]
        metadata = dict(pair.metadata, label_flipped=True)
        if "gold_chosen" in metadata and "gold_rejected" in metadata:
            metadata["gold_chosen"], metadata["gold_rejected"] = metadata["gold_rejected"], metadata["gold_chosen"]
        out[i] = replace(pair, chosen=pair.rejected, rejected=pair.chosen, metadata=metadata)
    return out, flipped


def run(config: NoiseSweepConfig) -> dict:
    from ..report.plots import line_plot

    out = Path(config.output_dir)
    pairs = load_records(config.data, "preference", config.columns)
    train_pairs, val_pairs = reward.split_pairs(pairs, config.val_fraction, config.seed)
    save_config(config, out)
    val_file = out / "val_pairs.jsonl"
    write_jsonl(val_file, val_pairs)
    console.print(
        f"noise sweep: {len(train_pairs)} training pairs, {len(val_pairs)} held-out pairs (fixed, never flipped), "
        f"rates {', '.join(f'{r:.0%}' for r in config.rates)}"
    )

    rows = []
    for rate in sorted(config.rates):
        run_dir = out / f"rate_{rate:.2f}"
        noisy, flipped = flip_labels(train_pairs, rate, config.seed)
        train_file = run_dir / "train_pairs.jsonl"
        write_jsonl(train_file, noisy)
        train_config = build_config(
            RewardTrainConfig,
            {
                "seed": config.seed,
                "threads": config.threads,
                **config.train,
                "model": config.model,
                "data": str(train_file),
                "output_dir": str(run_dir / "reward"),
            },
            source=f"{config.output_dir}: train",
        )
        trained = reward.train(train_config)
        held_out = reward.evaluate(
            RewardEvalConfig(
                model=trained["model_dir"],
                data=str(val_file),
                output_dir=str(run_dir / "eval"),
                max_length=train_config.max_length,
                max_prompt_length=train_config.max_prompt_length,
                attributions=0,
                threads=config.threads,
            )
        )
        row = {
            "rate": rate,
            "flipped": len(flipped),
            "train_pairs": len(train_pairs),
            "val_pairs": held_out["pairs"],
            "accuracy": held_out["accuracy"],
            "ece": held_out["ece"],
            "gold_accuracy": held_out.get("gold_accuracy"),
            "length_controlled_accuracy": held_out["length_controlled_accuracy"],
            "noisy_val_accuracy": trained["best_val_accuracy"],
            "best_step": trained["best_step"],
            "run_dir": str(run_dir),
        }
        rows.append(row)
        console.print(
            f"flip {rate:.0%} ({len(flipped)} of {len(train_pairs)} labels): held-out accuracy {row['accuracy']:.3f}"
            + (f", against gold {row['gold_accuracy']:.3f}" if row["gold_accuracy"] is not None else "")
        )

    rates = [r["rate"] for r in rows]
    series = {"held-out accuracy": (rates, [r["accuracy"] for r in rows])}
    if all(r["gold_accuracy"] is not None for r in rows):
        series["accuracy against gold"] = (rates, [r["gold_accuracy"] for r in rows])
    plot = line_plot(
        series,
        out / "sweep.png",
        xlabel="share of training labels flipped",
        ylabel="accuracy on the fixed held-out pairs",
        title=f"reward model under label noise ({len(train_pairs)} training, {len(val_pairs)} held-out pairs)",
    )
    result = {
        "stage": "reward-noise-sweep",
        "model": config.model,
        "data": config.data,
        "seed": config.seed,
        "train_pairs": len(train_pairs),
        "val_pairs": len(val_pairs),
        "val_file": str(val_file),
        "train_overrides": config.train,
        "rows": rows,
        "plot": str(plot),
    }
    table = format_table(rows)
    (out / "sweep.md").write_text(
        f"# Label-noise sweep: {config.data}\n\n{len(train_pairs)} training pairs, {len(val_pairs)} held-out "
        f"pairs (the same clean set for every rate).\n\n{table}\n"
    )
    write_json(out / "sweep.json", result)
    console.print(table)
    console.print(f"sweep: {out / 'sweep.json'}, {out / 'sweep.md'}, {plot}")
    return result


def format_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        return f"{value:.3f}" if value is not None else "-"

    lines = [
        "| flipped | labels flipped | held-out accuracy | accuracy against gold | length-controlled | ECE | noisy "
        "val accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rate']:.0%} | {r['flipped']} / {r['train_pairs']} | {cell(r['accuracy'])} | "
            f"{cell(r['gold_accuracy'])} "
            f"| {cell(r['length_controlled_accuracy'])} | {cell(r['ece'])} | {cell(r['noisy_val_accuracy'])} |"
        )
    return "\n".join(lines)
