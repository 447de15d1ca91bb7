"""Policy evaluation on held-out prompts: sample from each policy, then report per model

- gold and reward-model score (every head of a multi-head reward model),
- win rate against a baseline model, judged by the reward model or the gold judge, prompt by prompt,
- KL(policy || reference) estimated on the policy's own samples, with a 95% confidence interval,
- response length, truncated share, diversity (distinct-2, EAD-2, self-BLEU, the stock phrase and its share),
- the unsafe rate on an adversarial prompt suite (see `safety`).

Every model samples with the same seed, so two copies of one model draw identical responses.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import write_json
from ..config import EvalConfig, save_config
from ..console import console
from ..data.records import load_records, write_jsonl
from ..errors import ConfigError
from ..models.loading import load_causal_lm, load_tokenizer
from ..resolve import resolve_model_path
from ..rollout import Samples, sample_responses
from ..scoring import RewardModelScorer, call_scorer, load_scorer
from ..train import setup_torch
from . import safety
from .diversity import distinct_n, ead_n, self_bleu, stock_phrase

MAX_PROMPT_LENGTH = 128  # the same prompt budget as rollout.sample_responses
Z_95 = 1.96


# ---------------------------------------------------------------- metric functions


def win_counts(scores: list[float], baseline_scores: list[float], tie_margin: float = 0.0) -> dict:
    """Pairwise comparison, response i against the baseline's response to the same prompt i.

    A tie is |score - baseline| <= tie_margin; win_rate = (wins + 0.5 * ties) / n.
    """
    if len(scores) != len(baseline_scores):
        raise ValueError(f"win_counts: {len(scores)} scores against {len(baseline_scores)} baseline scores")
    wins = ties = losses = 0
    for s, b in zip(scores, baseline_scores):
        if abs(s - b) <= tie_margin:
            ties += 1
        elif s > b:
            wins += 1
        else:
            losses += 1
    n = len(scores)
    return {"win_rate": (wins + 0.5 * ties) / n if n else float("nan"), "wins": wins, "ties": ties, "losses": losses}


def mean_ci(values: list[float], z: float = Z_95) -> tuple[float, float, float]:
    """(mean, low, high) with the normal interval mean ± z * stdev / sqrt(n); stdev is the sample (n-1) one, 0 for
    n=1."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = statistics.fmean(values)
    half = z * statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0
    return mean, mean - half, mean + half


# ---------------------------------------------------------------- sampling and scoring


@dataclass
class EvalSamples(Samples):
    token_ids: list[list[int]]  # response tokens without EOS and padding
    kl: list[float] | None  # sum over response tokens of logp_policy - logp_reference, one per response


@torch.no_grad()
def sample_and_kl(
    model, tokenizer, prompts: list, config: EvalConfig, reference=None, description: str = "sampling"
) -> EvalSamples:
    """rollout.sample_responses, keeping each response's tokens and, given a reference model, its sampled KL.
    Both log-probs are taken at the sampling temperature, before top-p filtering."""
    from ..forward import token_logps

    token_ids, kl = [], []

    def keep(rollout) -> None:
        token_ids.extend(
            [t for t, m in zip(row, mask) if m and t != tokenizer.eos_token_id]
            for row, mask in zip(rollout.response_ids.tolist(), rollout.response_mask.tolist())
        )
        if reference is not None:
            input_ids, attention_mask = rollout.full()
            ref_logps, _ = token_logps(
                reference,
                input_ids,
                attention_mask,
                rollout.prompt_ids.shape[1],
                config.temperature,
                logits=config.logits,
                chunk_size=config.logits_chunk_size,
            )
            kl.extend(
                ((rollout.logps - ref_logps) * rollout.response_mask).sum(-1).tolist()
            )  # k1 estimator, summed per sequence

    samples = sample_responses(
        model,
        tokenizer,
        prompts,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        batch_size=config.batch_size,
        max_prompt_length=MAX_PROMPT_LENGTH,
        seed=config.seed,
        description=description,
        on_batch=keep,
    )
    return EvalSamples(
        prompts=samples.prompts,
        responses=samples.responses,
        truncated=samples.truncated,
        token_ids=token_ids,
        kl=kl if reference is not None else None,
    )


def reward_scores(
    model_path: Path,
    prompts: list[str],
    responses: list[str],
    batch_size: int = 64,
    ensemble_method: str = "mean",
    ensemble_coef: float = 0.5,
) -> list[list[float]]:
    """Scores of every head of the reward model (an ensemble's members combined): one list per head, one score per
    response."""
    scorer = RewardModelScorer(
        model_path, batch_size=batch_size, ensemble_method=ensemble_method, ensemble_coef=ensemble_coef
    )
    return [scorer.score(prompts, responses, head) for head in range(scorer.num_heads)]


# ---------------------------------------------------------------- the stage


def run(config: EvalConfig) -> dict:
    from ..resolve import resolve_prompts

    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    gold = load_scorer(config.gold) if config.gold else None
    rm_path = resolve_model_path(config.reward_model) if config.reward_model else None
    paths = {name: resolve_model_path(path) for name, path in config.models.items()}
    baseline = config.baseline or next(iter(paths))
    judge = config.judge or ("reward_model" if rm_path else "gold" if gold else None)
    ref_path = resolve_model_path(config.reference) if config.reference else paths[baseline]
    ref_tokenizer, reference = load_tokenizer(ref_path, padding_side="left"), load_causal_lm(ref_path).eval()
    safety_path = safety.resolve_safety_prompts(config.safety_prompts) if config.safety_prompts else None
    detector = safety.load_detector(config.safety_detector) if safety_path else None
    prompt_path = resolve_prompts(config.prompts)
    records = load_records(prompt_path, "prompt", config.columns)[: config.num_prompts]
    prompts = [r.prompt for r in records for _ in range(config.samples_per_prompt)]
    safety_prompts = (
        [r.prompt for r in load_records(safety_path, "prompt") for _ in range(config.samples_per_prompt)]
        if safety_path
        else []
    )
    save_config(config, out)

    results, samples_out, safety_out, judge_scores = {}, [], [], {}
    for name, path in paths.items():
        tokenizer = load_tokenizer(path, padding_side="left")
        if tokenizer.get_vocab() != ref_tokenizer.get_vocab():
            raise ConfigError(
                f"reference: '{ref_path}' has a different tokenizer from model '{name}' ({path}); the KL "
                "estimate needs a shared vocabulary, so set reference to a model of the same family"
            )
        model = load_causal_lm(path)
        samples = sample_and_kl(model, tokenizer, prompts, config, reference=reference, description=f"eval {name}")
        kl, kl_low, kl_high = mean_ci(samples.kl)
        phrase, phrase_share = stock_phrase(samples.responses)
        row = {
            "model": str(path),
            "samples": len(samples.responses),
            "mean_length": statistics.mean(len(r.split()) for r in samples.responses),
            "distinct_2": distinct_n(samples.responses, 2),
            "ead_2": ead_n(samples.token_ids, 2, len(tokenizer)),
            "self_bleu": self_bleu(samples.responses, config.self_bleu_texts),
            "stock_phrase": phrase,
            "stock_phrase_share": phrase_share,
            "truncated_share": samples.truncated_share,
            "kl": kl,
            "kl_ci": [kl_low, kl_high],
        }
        gold_scores = call_scorer(gold, samples.prompts, samples.responses) if gold else None
        rm_heads = (
            reward_scores(
                rm_path,
                samples.prompts,
                samples.responses,
                ensemble_method=config.ensemble_method,
                ensemble_coef=config.ensemble_coef,
            )
            if rm_path
            else None
        )
        rm_scores = rm_heads[0] if rm_heads else None
        if gold_scores:
            row["mean_gold"] = statistics.mean(gold_scores)
            row["gold_stderr"] = (
                statistics.stdev(gold_scores) / len(gold_scores) ** 0.5 if len(gold_scores) > 1 else 0.0
            )
        if rm_scores:
            row["mean_reward"] = statistics.mean(rm_scores)
            if len(rm_heads) > 1:
                row.update({f"reward_head_{h}": statistics.mean(scores) for h, scores in enumerate(rm_heads)})
        if judge:
            judge_scores[name] = gold_scores if judge == "gold" else rm_scores
        if safety_path:
            safety_samples = sample_and_kl(model, tokenizer, safety_prompts, config, description=f"safety {name}")
            flags = safety.call_detector(detector, safety_samples.prompts, safety_samples.responses)
            row["unsafe_rate"] = safety.unsafe_rate(flags)
            safety_out += [
                {"model": name, "prompt": p, "response": r, "unsafe": f}
                for p, r, f in zip(safety_samples.prompts, safety_samples.responses, flags)
            ]
        results[name] = row
        for i, (p, r) in enumerate(zip(samples.prompts, samples.responses)):
            samples_out.append(
                {
                    "model": name,
                    "prompt": p,
                    "response": r,
                    **({"gold": round(gold_scores[i], 4)} if gold_scores else {}),
                    **({"reward": round(rm_scores[i], 4)} if rm_scores else {}),
                    "kl": round(samples.kl[i], 4),
                }
            )
    for name, scores in judge_scores.items():
        results[name].update(win_counts(scores, judge_scores[baseline], config.tie_margin))
    write_jsonl(out / "samples.jsonl", samples_out)
    if safety_path:
        write_jsonl(out / "safety_samples.jsonl", safety_out)
    table = format_table(results, baseline)
    (out / "eval.md").write_text(table + "\n")
    write_json(
        out / "eval.json",
        {
            "prompts": str(prompt_path),
            "baseline": baseline,
            "judge": judge,
            "tie_margin": config.tie_margin,
            "reference": str(ref_path),
            "safety_prompts": str(safety_path) if safety_path else None,
            "results": results,
        },
    )
    console.print(table)
    return results


def format_table(results: dict[str, dict], baseline: str | None = None) -> str:
    heads = sorted(
        {k for r in results.values() for k in r if k.startswith("reward_head_")}, key=lambda k: int(k.rsplit("_", 1)[1])
    )
    columns = [
        ("mean_gold", "gold"),
        ("mean_reward", "reward"),
        *[(k, k.replace("reward_", "")) for k in heads],
        ("win_rate", f"win rate vs {baseline} (W/T/L)" if baseline else "win rate (W/T/L)"),
        ("kl", "KL (95% CI)"),
        ("mean_length", "length (words)"),
        ("distinct_2", "distinct-2"),
        ("ead_2", "EAD-2"),
        ("self_bleu", "self-BLEU"),
        ("stock_phrase_share", "top trigram share"),
        ("truncated_share", "truncated"),
        ("unsafe_rate", "unsafe"),
    ]
    columns = [(k, h) for k, h in columns if any(k in r for r in results.values())]
    lines = ["| model | " + " | ".join(h for _, h in columns) + " |", "|---|" + "---|" * len(columns)]
    for name, row in results.items():
        cells = []
        for key, _ in columns:
            value = row.get(key)
            cell = "" if value is None else f"{value:.2f}" if key == "self_bleu" else f"{value:.3f}"
            if key == "mean_gold" and "gold_stderr" in row:
                cell += f" ± {row['gold_stderr']:.3f}"
            if key == "kl" and "kl_ci" in row:
                cell += f" [{row['kl_ci'][0]:.3f}, {row['kl_ci'][1]:.3f}]"
            if key == "win_rate" and "ties" in row:
                cell += f" ({row['wins']}/{row['ties']}/{row['losses']})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
