"""Candidate pairs: sample two responses per prompt from a model and have a simulated panel label them.

Writes `pairs.jsonl` (preference pairs: the panel's majority choice is `chosen`; metadata keeps both gold
scores, every vote and the panel's agreement; with `objectives`, the same panel also votes on each objective from
its own gold, and the majorities become the pair's `labels`) and `judgments.jsonl` (one row per annotator vote; `a`
and `b` in sampling order, with `chosen_side` naming the one that became `chosen`, and `criteria` the votes per
objective).
"""

from __future__ import annotations

from pathlib import Path

from ..config import PairsConfig, save_config
from ..console import console
from ..data.records import PreferencePair, load_records, write_jsonl
from ..feedback.panel import SimulatedPanel, majority
from ..models.loading import load_causal_lm, load_tokenizer
from ..resolve import resolve_model_path, resolve_prompts
from ..rollout import sample_responses
from ..scoring import call_scorer, load_scorer
from ..train import RunLog, setup_torch


def run(config: PairsConfig) -> dict:
    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    gold = load_scorer(config.gold)
    objective_golds = {name: load_scorer(spec, f"objectives.{name}") for name, spec in config.objective_golds().items()}
    model_path = resolve_model_path(config.model)
    prompt_path = resolve_prompts(config.prompts)
    records = load_records(prompt_path, "prompt", config.columns)[: config.num_prompts]
    tokenizer = load_tokenizer(model_path, padding_side="left")
    model = load_causal_lm(model_path)
    save_config(config, out)
    log = RunLog(out)

    doubled = [r.prompt for r in records for _ in range(2)]
    samples = sample_responses(
        model,
        tokenizer,
        doubled,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        batch_size=config.batch_size,
        max_prompt_length=config.max_prompt_length,
        seed=config.seed,
        description="sampling candidate pairs",
    )
    scores = call_scorer(gold, samples.prompts, samples.responses)
    panel = SimulatedPanel(config.panel)
    objectives = {  # objective -> (its gold scores of every sample, the panel voting on it)
        name: (
            call_scorer(scorer, samples.prompts, samples.responses, f"objectives.{name}"),
            SimulatedPanel(config.panel, stream=k + 1),
        )
        for k, (name, scorer) in enumerate(objective_golds.items())
    }
    pairs, judgments = [], []
    skipped = {"identical": 0, "empty": 0}
    for i, record in enumerate(records):
        a, b = samples.responses[2 * i], samples.responses[2 * i + 1]
        gold_a, gold_b = scores[2 * i], scores[2 * i + 1]
        if not a.strip() or not b.strip():
            skipped["empty"] += 1
            continue
        if config.skip_identical and a.strip() == b.strip():
            skipped["identical"] += 1
            continue
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
