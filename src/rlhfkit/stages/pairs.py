"""Candidate pairs: sample two responses per prompt from a model and have a simulated panel label them.

Writes `pairs.jsonl` (preference pairs: the panel's majority choice is `chosen`; metadata keeps both gold
scores, every vote and the panel's agreement) and `judgments.jsonl` (one row per annotator vote; `a` and `b` in sampling
order, with `chosen_side` naming the one that became `chosen`).
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
                },
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
    summary = log.summary(
        stage="pairs",
        model=str(model_path),
        prompts=str(prompt_path),
        pairs=len(pairs),
        skipped=skipped,
        mean_gold=round(mean_gold, 4),
        truncated_share=round(samples.truncated_share, 4),
        panel_matches_gold=round(gold_agree, 4),
        annotators=[vars(a) for a in panel.annotators],
        pairs_file=str(out / "pairs.jsonl"),
    )
    console.print(
        f"pairs: {len(pairs)} labelled pairs (skipped {skipped}); panel majority agrees with gold on {gold_agree:.1%}; "
        f"{samples.truncated_share:.1%} of responses hit max_new_tokens; wrote {out / 'pairs.jsonl'}"
    )
    if samples.truncated_share > 0.2:
        console.print(
            f"[bold red]warning:[/] {samples.truncated_share:.0%} of responses were cut at "
            f"max_new_tokens={config.max_new_tokens}; raise it"
        )
    return summary
