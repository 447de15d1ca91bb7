"""`rlhfkit shift`: the distribution-shift monitor. Are new prompts (or labelled pairs, or a policy's responses to
them as pairs) far from what the reward model trained on, and is the model less sure and less right there?

Writes shift.json: every figure on each set (reference, baseline, new), the verdict of each check against the
config's thresholds, `shifted` (any check says so) and the new prompts farthest from the training ones. The verdict
is data: the command exits 0 either way, unless `fail_on_shift=true` (for CI), when a shift exits 1.

Also stage `round-shift` (a flywheel round): the configured pluggable checks of one round's labels."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import Field

from ..atomic import write_json
from ..config import Strict, save_config
from ..console import console
from ..data.records import PreferencePair, detect_kind, load_records
from ..evaluate import shift as measures
from ..evaluate.reward_metrics import preference_accuracy
from ..evaluate.shift import ShiftInputs, ShiftVerdict, load_check
from ..scoring import is_ensemble


class ShiftConfig(Strict):
    """`rlhfkit shift`: distances, reward-model confidence, accuracy and gold agreement on new vs training data."""

    reference: str = Field(
        ..., description="what the reward model trained on: preference pairs or prompt JSONL (its prompts are used)"
    )
    new: str = Field(
        ..., description="the new data: preference pairs (labelled, or a policy's response pairs) or prompt JSONL"
    )
    reward_model: str | None = Field(
        None,
        description="reward-model directory, or an ensemble directory (with ensemble.json); null: distances only",
    )
    baseline: str | None = Field(
        None,
        description="in-distribution pairs the reward model did not train on (reward train's val_pairs.jsonl): "
        "the reward model's figures on `new` are compared with these (default: `reference`, where they read high)",
    )
    gold: str | None = Field(
        None,
        description="gold judge module:function f(prompts, responses) -> scores, 'default' for the default task's; "
        "its agreement with the reward model on each set (null: none)",
    )
    embedding_model: str = Field("minilm", description="sentence encoder of the prompts ('minilm' or a directory)")
    max_distance: float = Field(
        0.1,
        ge=0,
        description="shifted when the new prompts' mean cosine distance to the nearest training prompt "
        "exceeds the baseline's (or the reference's leave-one-out) by more than this",
    )
    max_accuracy_drop: float = Field(
        0.05, ge=0, description="shifted when the reward model's accuracy on `new` is this far below the baseline's"
    )
    max_confidence_drop: float | None = Field(
        None,
        ge=0,
        description="shifted when the reward model's confidence mean |2 sigmoid(margin) - 1| on `new` is "
        "this far below the baseline's (null: reported, never a verdict)",
    )
    max_disagreement_rise: float = Field(
        0.05,
        ge=0,
        description="ensembles: shifted when the members' disagreement on `new` exceeds the baseline's "
        "by more than this",
    )
    max_gold_drop: float = Field(
        0.05, ge=0, description="shifted when the reward model agrees with `gold` this much less on `new`"
    )
    farthest: int = Field(10, ge=0, description="list the N new prompts farthest from the training prompts")
    fail_on_shift: bool = Field(False, description="exit 1 when shifted (for CI); shift.json is written either way")
    batch_size: int = Field(32, gt=0, description="sequences per forward pass")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")
    output_dir: str = Field("runs/shift", description="writes shift.json")


def load_set(path: str) -> tuple[list[str], list[PreferencePair]]:
    """(distinct prompts, labelled pairs) of a file: pairs give both, prompt (or sft, unpaired) records prompts."""
    kind = detect_kind(path)
    records = load_records(path, kind)
    return measures.prompt_texts(records), records if kind == "preference" else []


def set_figures(scorers: list, ensemble: bool, pairs: list[PreferencePair], gold) -> dict[str, Any]:
    """The reward model's figures on one set of pairs: accuracy against the labels, confidence, the ensemble's
    disagreement and agreement with the gold judge, where each applies."""
    if not pairs or not scorers:
        return {}
    margins, member_margins = measures.reward_margins(scorers, pairs)
    figures = {"rm_accuracy": preference_accuracy(measures.finite(margins)), "confidence": measures.confidence(margins)}
    if ensemble:
        figures["disagreement"] = measures.disagreement(member_margins)
    if gold is not None:
        from ..scoring import call_scorer

        prompts = [p.prompt for p in pairs] * 2
        scores = call_scorer(gold, prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
        gold_margins = [c - r for c, r in zip(scores[: len(pairs)], scores[len(pairs) :])]
        figures["gold_agreement"] = measures.agreement(margins, gold_margins)
        figures["label_gold_agreement"] = measures.agreement([1.0] * len(pairs), gold_margins)
    return figures


def verdict(
    name: str, new: float | None, base: float | None, limit: float | None, sign: int, counts: tuple[int, int] = (0, 0)
) -> ShiftVerdict:
    """Shifted when sign * (new - base) > limit (sign +1 for a measure that rises under shift, -1 for one that
    falls) and, for a share of `counts` pairs, also beyond two standard errors of the difference: on 100 pairs a
    side, an accuracy of 0.8 moves by 0.06 between two random splits."""
    if new is None or base is None or new != new or base != base:
        return ShiftVerdict(name, None, new, base, limit, f"{name}: not measured on both sets")
    change = sign * (new - base)
    noise = 0.0
    if all(counts):
        noise = 2 * math.sqrt(new * (1 - new) / counts[0] + base * (1 - base) / counts[1])
    shifted = None if limit is None else change > max(limit, noise)
    word = "reported only" if limit is None else f"limit {limit}" + (f", 2 s.e. {noise:.3f}" if noise else "")
    return ShiftVerdict(
        name, shifted, new, base, limit, f"{name} {new:.3f} on new vs {base:.3f} ({word})", {"noise": noise}
    )


def run(config: ShiftConfig) -> dict:
    from ..scoring import load_scorer
    from ..train import setup_torch

    out = Path(config.output_dir)
    setup_torch(0, config.threads)
    gold = load_scorer(config.gold) if config.gold else None
    reference_prompts, reference_pairs = load_set(config.reference)
    new_prompts, new_pairs = load_set(config.new)
    baseline_prompts, baseline_pairs = load_set(config.baseline) if config.baseline else ([], [])
    ensemble = config.reward_model is not None and is_ensemble(config.reward_model)
    scorers = measures.reward_scorers(config.reward_model, config.batch_size) if config.reward_model else []
    save_config(config, out)
    notes = []

    # (a) distances: each prompt's cosine distance to its nearest training prompt (the reference's own prompts
    # leave themselves out), so a set drawn from the training distribution sits near the reference's figure
    reference_vectors = measures.embed(reference_prompts, config.embedding_model)
    distances = {"reference": measures.nearest_distances(reference_vectors, reference_vectors, leave_one_out=True)}
    distances["new"] = measures.nearest_distances(
        measures.embed(new_prompts, config.embedding_model), reference_vectors
    )
    if baseline_prompts:
        vectors = measures.embed(baseline_prompts, config.embedding_model)
        distances["baseline"] = measures.nearest_distances(vectors, reference_vectors)
    sets: dict[str, dict[str, Any]] = {
        name: {"file": path, "prompts": len(distances[name]), "distance": sum(distances[name]) / len(distances[name])}
        for name, path in (("reference", config.reference), ("baseline", config.baseline), ("new", config.new))
        if name in distances
    }
    farthest = sorted(zip(new_prompts, distances["new"]), key=lambda row: -row[1])[: config.farthest]

    # (b, c) the reward model on each set of labelled pairs; the baseline is held-out in-distribution data
    base_name = "baseline" if baseline_pairs else "reference"
    for name, pairs in (("reference", reference_pairs), ("baseline", baseline_pairs), ("new", new_pairs)):
        if name in sets:
            sets[name].update({"pairs": len(pairs), **set_figures(scorers, ensemble, pairs, gold)})
    if config.reward_model is None:
        notes.append("no reward_model: prompt distances only")
    elif not new_pairs:
        notes.append(f"{config.new} holds prompts, not pairs: no reward-model figures on the new set")
    elif base_name == "reference":
        notes.append(
            "no baseline: the reward model's figures are compared with its training pairs, where they read high"
        )
    if config.reward_model is not None and not ensemble:
        notes.append("the reward model is not an ensemble (no ensemble.json): no disagreement figure")

    # (d) the verdicts
    base_distance = sets.get("baseline", sets["reference"])["distance"]
    new_set, base_set = sets["new"], sets[base_name]
    counts = (new_set.get("pairs", 0), base_set.get("pairs", 0))
    checks = [
        verdict("distance", new_set["distance"], base_distance, config.max_distance, +1),
        verdict(
            "rm_accuracy", new_set.get("rm_accuracy"), base_set.get("rm_accuracy"), config.max_accuracy_drop, -1, counts
        ),
        verdict("confidence", new_set.get("confidence"), base_set.get("confidence"), config.max_confidence_drop, -1),
        verdict(
            "gold_agreement",
            new_set.get("gold_agreement"),
            base_set.get("gold_agreement"),
            config.max_gold_drop,
            -1,
            counts,
        ),
    ]
    if "disagreement" in new_set:
        rise = config.max_disagreement_rise
        checks.append(verdict("disagreement", new_set["disagreement"], base_set.get("disagreement"), rise, +1))
    shifted = any(c.shifted for c in checks)
    result = {
        "stage": "shift",
        "shifted": shifted,
        "compared_with": base_name,
        "checks": [c.to_dict() for c in checks],
        "sets": sets,
        "farthest": [{"prompt": text, "distance": round(d, 4)} for text, d in farthest],
        "notes": notes,
        "exit_code": 1 if shifted and config.fail_on_shift else 0,
    }
    write_json(out / "shift.json", result)
    print_table(result)
    return result


def print_table(result: dict) -> None:
    rows = ["distance", "rm_accuracy", "confidence", "disagreement", "gold_agreement"]
    names = list(result["sets"])
    console.print("shift: " + " | ".join(["measure".ljust(14), *(n.rjust(9) for n in names)]))
    for row in rows:
        values = [result["sets"][n].get(row) for n in names]
        if any(v is not None for v in values):
            cells = ["-".rjust(9) if v is None else f"{v:9.3f}" for v in values]
            console.print("shift: " + " | ".join([row.ljust(14), *cells]))
    for c in result["checks"]:
        word = {True: "SHIFT", False: "ok", None: "n/a"}[c["shifted"]]
        console.print(f"shift check {c['check']}: {word}: {c['detail']}")
    for note in result["notes"]:
        console.print(f"shift: note: {note}")
    for row in result["farthest"][:3]:
        console.print(f"shift: far out ({row['distance']:.3f}): {row['prompt']}")
    console.print(f"shift: {'SHIFTED' if result['shifted'] else 'no shift'} (vs {result['compared_with']})")


# ------------------------------------------------------------------ stage `round-shift`: a step of flywheel rounds


class ShiftCheck(Strict):
    check: str = Field(..., description="reward_accuracy, embedding, or module:function(inputs, **options)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the check (max_drop, ...)")


class RoundShiftConfig(Strict):
    """Distribution-shift checks of one round's labels against what the production reward model learned."""

    newest: str = Field(..., description="this round's held-out labelled pairs")
    older: str | None = Field(None, description="held-out pairs of the earlier rounds in the window")
    reference: str | None = Field(None, description="the pairs the production reward model was trained on")
    reward_model: str | None = Field(None, description="the production reward model (null in the first round)")
    checks: list[ShiftCheck] = Field(
        default_factory=lambda: [ShiftCheck(check="reward_accuracy")], description="the checks, in order"
    )
    output_dir: str = Field("runs/shift", description="writes shift.json")


def pairs_of(path: str | None) -> list:
    if path is None or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return []
    return load_records(path, "preference")


def run_round(config: RoundShiftConfig) -> dict:
    out = Path(config.output_dir)
    inputs = ShiftInputs(
        newest=pairs_of(config.newest),
        older=pairs_of(config.older),
        reference=pairs_of(config.reference),
        reward_model=config.reward_model,
    )
    save_config(config, out)
    verdicts = [load_check(c.check)(inputs, **c.options).to_dict() for c in config.checks]
    shifted = any(v["shifted"] for v in verdicts)
    result = {"stage": "shift", "shifted": shifted, "checks": verdicts}
    write_json(out / "shift.json", result)
    for v in verdicts:
        word = {True: "SHIFT", False: "no shift", None: "n/a"}[v["shifted"]]
        console.print(f"shift check {v['check']}: {word}: {v['detail']}")
    return result
