"""Candidate pairs: sample two responses per prompt from a model and have a simulated panel label them.

Writes `pairs.jsonl` (preference pairs: the panel's majority choice is `chosen`; metadata keeps both gold
scores, every vote and the panel's agreement; with `objectives`, the same panel also votes on each objective from
its own gold, and the majorities become the pair's `labels`) and `judgments.jsonl` (one row per annotator vote; `a`
and `b` in sampling order, with `chosen_side` naming the one that became `chosen`, and `criteria` the votes per
objective).

With `selection=disagreement` the prompts' candidate pairs are a pool, and only the `budget` pairs a reward-model
ensemble is least sure of are labelled (active selection: the highest standard deviation over its members of
sigmoid(r_a - r_b), scoring.preference_disagreement); `selection=random` keeps `budget` pairs drawn at random, the
baseline to compare it with.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..config import PairsConfig, save_config
from ..console import console
from ..data.records import PreferencePair, load_records, write_jsonl
from ..errors import ConfigError
from ..feedback.panel import SimulatedPanel, majority
from ..models.loading import load_causal_lm, load_tokenizer
from ..resolve import resolve_model_path, resolve_prompts
from ..rollout import sample_with
from ..scoring import (
    RewardModelScorer,
    call_scorer,
    is_ensemble,
    load_scorer,
    most_uncertain,
    preference_disagreement,
    require_reward_model,
)
from ..train import RunLog, setup_torch


def run(config: PairsConfig) -> dict:
    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    gold = load_scorer(config.gold)
    objective_golds = {name: load_scorer(spec, f"objectives.{name}") for name, spec in config.objective_golds().items()}
    model_path = resolve_model_path(config.model)
    selector = load_selector(config)
    prompt_path = resolve_prompts(config.prompts)
    records = load_records(prompt_path, "prompt", config.columns)[: config.num_prompts]
    tokenizer = load_tokenizer(model_path, padding_side="left")
    model = load_causal_lm(model_path)
    save_config(config, out)
    log = RunLog(out)

    doubled = [r.prompt for r in records for _ in range(2)]
    samples = sample_with(config, model, tokenizer, doubled, "sampling candidate pairs")
    scores = call_scorer(gold, samples.prompts, samples.responses)
    panel = SimulatedPanel(config.panel)
    objectives = {  # objective -> (its gold scores of every sample, the panel voting on it)
        name: (
            call_scorer(scorer, samples.prompts, samples.responses, f"objectives.{name}"),
            SimulatedPanel(config.panel, stream=k + 1),
        )
        for k, (name, scorer) in enumerate(objective_golds.items())
    }
    skipped = {"identical": 0, "empty": 0}
    candidates = []  # prompt indices whose two responses make a pair worth labelling
    for i in range(len(records)):
        a, b = samples.responses[2 * i], samples.responses[2 * i + 1]
        if not a.strip() or not b.strip():
            skipped["empty"] += 1
        elif config.skip_identical and a.strip() == b.strip():
            skipped["identical"] += 1
        else:
            candidates.append(i)
    kept, disagreement, selection = select_pairs(config, selector, samples, candidates)
    pairs, judgments = [], []
    for i in kept:
        record = records[i]
        a, b = samples.responses[2 * i], samples.responses[2 * i + 1]
        gold_a, gold_b = scores[2 * i], scores[2 * i + 1]
        pair_id = f"pair-{i}"
        votes = panel.label(gold_a, gold_b, a, b)
        winner, agreement = majority(votes)
        chosen, rejected = (a, b) if winner == "a" else (b, a)
        gold_c, gold_r = (gold_a, gold_b) if winner == "a" else (gold_b, gold_a)
        labels, gold_objectives, criteria_votes = {}, {}, {}
        for name, (objective_scores, objective_panel) in objectives.items():
            obj_a, obj_b = objective_scores[2 * i], objective_scores[2 * i + 1]
            objective_votes = objective_panel.label(obj_a, obj_b, a, b)
            labels[name] = "chosen" if majority(objective_votes)[0] == winner else "rejected"
            c, r = (obj_a, obj_b) if winner == "a" else (obj_b, obj_a)
            gold_objectives[name] = {"chosen": round(c, 4), "rejected": round(r, 4)}
            criteria_votes[name] = {v.annotator: v.choice for v in objective_votes}
        pairs.append(
            PreferencePair(
                prompt=record.prompt,
                chosen=chosen,
                rejected=rejected,
                id=pair_id,
                category=record.category,
                annotator="panel",
                metadata={
                    "gold_chosen": round(gold_c, 4),
                    "gold_rejected": round(gold_r, 4),
                    "agreement": round(agreement, 3),
                    "votes": {v.annotator: v.choice for v in votes},
                    **({"gold_objectives": gold_objectives} if objectives else {}),
                    **({"disagreement": round(disagreement[i], 6)} if disagreement else {}),
                },
                labels=labels or None,
            )
        )
        # choices in sampling order (a = the first sample); chosen_side says which of them became `chosen`
        judgments.extend(
            {
                "pair_id": pair_id,
                "annotator": v.annotator,
                "choice": v.choice,
                "shown_first": v.first,
                "chosen_side": "a" if winner == "a" else "b",
                # the annotator's choice per objective, in sampling order too (as the annotation app exports them)
                **({"criteria": {name: cv[v.annotator] for name, cv in criteria_votes.items()}} if objectives else {}),
            }
            for v in votes
        )
    write_jsonl(out / "judgments.jsonl", judgments)
    write_jsonl(out / "pairs.jsonl", pairs)
    gold_agree = sum(p.metadata["gold_chosen"] >= p.metadata["gold_rejected"] for p in pairs) / max(1, len(pairs))
    mean_gold = sum(scores) / max(1, len(scores))
    log.log(
        0, pairs=len(pairs), mean_gold=mean_gold, truncated_share=samples.truncated_share, panel_matches_gold=gold_agree
    )
    label_agreement = {
        name: round(sum(p.labels[name] == "chosen" for p in pairs) / max(1, len(pairs)), 4) for name in objectives
    }
    summary = log.summary(
        stage="pairs",
        model=str(model_path),
        prompts=str(prompt_path),
        pairs=len(pairs),
        skipped=skipped,
        **({"selection": selection} if selection else {}),
        mean_gold=round(mean_gold, 4),
        truncated_share=round(samples.truncated_share, 4),
        panel_matches_gold=round(gold_agree, 4),
        **({"objectives": list(objectives), "objective_agrees_with_overall": label_agreement} if objectives else {}),
        annotators=[vars(a) for a in panel.annotators],
        pairs_file=str(out / "pairs.jsonl"),
    )
    console.print(
        f"pairs: {len(pairs)} labelled pairs (skipped {skipped}); panel majority agrees with gold on {gold_agree:.1%}; "
        f"{samples.truncated_share:.1%} of responses hit max_new_tokens; wrote {out / 'pairs.jsonl'}"
    )
    if selection:
        line = f"selection={config.selection}: labelled {selection['kept']} of a pool of {selection['pool']} pairs"
        if "pool_mean_disagreement" in selection:
            line += (
                f"; mean ensemble disagreement {selection['kept_mean_disagreement']:.4f} kept vs "
                f"{selection['pool_mean_disagreement']:.4f} over the pool"
            )
        console.print(line)
    if objectives:
        console.print(
            "objective labels agree with the overall label on "
            + ", ".join(f"{share:.1%} ({name})" for name, share in label_agreement.items())
        )
    if samples.truncated_share > 0.2:
        console.print(
            f"[bold red]warning:[/] {samples.truncated_share:.0%} of responses were cut at "
            f"max_new_tokens={config.max_new_tokens}; raise it"
        )
    return summary


def load_selector(config: PairsConfig) -> RewardModelScorer | None:
    """The ensemble of selection=disagreement, loaded (and refused when it is not an ensemble) before any sampling."""
    if config.selection != "disagreement":
        return None
    path = resolve_model_path(config.selection_model)
    hint = "give the model/ directory of `rlhfkit reward train ensemble=K`"
    require_reward_model(path, config.selection_model, hint)
    if not is_ensemble(path):
        raise ConfigError(
            f"selection_model={config.selection_model}: a single reward model, not an ensemble (no ensemble.json); "
            f"selection=disagreement ranks pairs by how much an ensemble's members disagree: {hint}"
        )
    return RewardModelScorer(path)


def select_pairs(
    config: PairsConfig, selector: RewardModelScorer | None, samples, candidates: list[int]
) -> tuple[list[int], dict[int, float], dict]:
    """(the candidate prompt indices to label, in pool order; each candidate's ensemble disagreement; the summary's
    `selection`) under config.selection."""
    if config.selection == "all":
        return candidates, {}, {}
    if config.budget > len(candidates):
        raise ConfigError(
            f"budget={config.budget}: the pool holds only {len(candidates)} candidate pairs (from num_prompts="
            f"{len(samples.prompts) // 2} prompts, after dropping empty and identical pairs); raise num_prompts or "
            "lower budget"
        )
    summary = {"method": config.selection, "pool": len(candidates), "kept": config.budget}
    if config.selection == "disagreement":
        summary["measure"] = config.selection_measure
    if config.selection == "random":
        return sorted(random.Random(config.seed).sample(candidates, config.budget)), {}, summary
    prompts = [samples.prompts[2 * i] for i in candidates]
    members_a = selector.score_members(prompts, [samples.responses[2 * i] for i in candidates])
    members_b = selector.score_members(prompts, [samples.responses[2 * i + 1] for i in candidates])
    disagreement = dict(zip(candidates, preference_disagreement(members_a, members_b, config.selection_measure)))
    ranked = [candidates[j] for j in most_uncertain([disagreement[i] for i in candidates], config.budget)]

    def mean(values):
        values = [v for v in values if v == v]  # a pair with no room for a response after truncation has none
        return round(sum(values) / max(1, len(values)), 6)

    summary["pool_mean_disagreement"] = mean(disagreement.values())
    summary["kept_mean_disagreement"] = mean(disagreement[i] for i in ranked)
    summary["ensemble"] = str(selector.path)
    summary["members"] = len(selector.models)
    return sorted(ranked), disagreement, summary
