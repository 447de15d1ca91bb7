"""Stage `labels` (a flywheel round): this round's labels from every source, one split into train and held-out parts,
and the rolling window the reward model retrains on.

Each pair of the round gets a new id `rROUND-SOURCE-ID` and metadata {round, source, split}; the held-out share
(by prompt, so no prompt is on both sides) never trains. Writes:
- labels.jsonl: this round's labels, both splits (what later rounds read back as `earlier`);
- train.jsonl: the train split of this round and of every earlier round in the window (the reward model's data);
- new_train.jsonl: this round's train split alone (a DPO policy's "new pairs");
- newest.jsonl: this round's held-out split; older.jsonl: the held-out splits of the earlier rounds in the window;
- summary.json: counts by source and round, and the share of the window that is this round's.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from pydantic import Field

from ..atomic import write_json
from ..config import Strict, save_config
from ..console import console
from ..data.records import PreferencePair, load_records, write_jsonl
from ..errors import DataError
from ..feedback.live import prompt_key


class LabelsConfig(Strict):
    """A round's labels and the rolling window of labels the reward model trains on."""

    round: int = Field(..., ge=1, description="the round these labels belong to")
    sources: dict[str, str] = Field(
        ..., description="source name -> this round's labelled preference JSONL (panel, feedback, judge, annotate)"
    )
    earlier: dict[str, str] = Field(
        default_factory=dict,
        description="round name -> labels.jsonl of an earlier round inside the window (older rounds have aged out)",
    )
    heldout_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of this round's prompts held out (newest.jsonl), never trained on"
    )
    seed: int = Field(0, description="seed of the train / held-out split")
    output_dir: str = Field("runs/labels", description="writes labels.jsonl, train.jsonl, newest.jsonl, summary.json")


def tagged(pair: PreferencePair, round_number: int, source: str, split: str) -> PreferencePair:
    return PreferencePair(
        prompt=pair.prompt,
        chosen=pair.chosen,
        rejected=pair.rejected,
        id=f"r{round_number}-{source}-{pair.id}",
        category=pair.category,
        margin=pair.margin,
        annotator=pair.annotator or source,
        metadata={**pair.metadata, "round": round_number, "source": source, "split": split},
    )


def run(config: LabelsConfig) -> dict:
    out = Path(config.output_dir)
    rng = random.Random(f"{config.seed}-{config.round}")
    found: list[tuple[str, PreferencePair]] = []
    by_source: dict[str, int] = {}
    for source, path in config.sources.items():
        pairs = load_records(path, "preference") if Path(path).is_file() and Path(path).stat().st_size else []
        by_source[source] = len(pairs)
        found += [(source, p) for p in pairs]
    if not found:
        raise DataError(
            f"round {config.round}: no labels from any source ({', '.join(config.sources)}); check the sources' files"
        )
    prompts = sorted({prompt_key(p.prompt) for _, p in found})
    rng.shuffle(prompts)
    heldout = set(prompts[: int(len(prompts) * config.heldout_fraction)])
    labels = [
        tagged(p, config.round, source, "heldout" if prompt_key(p.prompt) in heldout else "train")
        for source, p in found
    ]
    new_train = [p for p in labels if p.metadata["split"] == "train"]
    newest = [p for p in labels if p.metadata["split"] == "heldout"]
    earlier_train, older, by_round = [], [], {f"round-{config.round}": len(new_train)}
    for name, path in config.earlier.items():
        rows = load_records(path, "preference")
        earlier_train += [p for p in rows if p.metadata.get("split") == "train"]
        older += [p for p in rows if p.metadata.get("split") == "heldout"]
        by_round[name] = sum(p.metadata.get("split") == "train" for p in rows)
    train = new_train + earlier_train
    save_config(config, out)
    write_jsonl(out / "labels.jsonl", labels)
    write_jsonl(out / "new_train.jsonl", new_train)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "newest.jsonl", newest)
    write_jsonl(out / "older.jsonl", older)
    summary = {
        "stage": "labels",
        "round": config.round,
        "labels": len(labels),
        "by_source": by_source,
        "train": len(train),
        "new_train": len(new_train),
        "newest": len(newest),
        "older": len(older),
        "window_rounds": by_round,
        "new_share": round(len(new_train) / max(1, len(train)), 4),
        "categories": dict(Counter(p.category or "none" for p in labels)),
    }
    write_json(out / "summary.json", summary)
    console.print(
        f"labels: round {config.round} has {len(labels)} labels "
        f"({', '.join(f'{k} {v}' for k, v in by_source.items())});"
        f" the window has {len(train)} training pairs from {len(by_round)} rounds, {summary['new_share']:.0%} new"
    )
    return summary
