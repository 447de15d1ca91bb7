"""Policy evaluation on held-out prompts: sample, then score by gold judge and reward model; length and diversity."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from ..config import EvalConfig, save_config
from ..data.records import load_records, write_jsonl
from ..models.loading import load_causal_lm, load_reward_model, load_tokenizer, resolve_model_path
from ..rollout import sample_responses
from ..scoring import call_scorer, load_scorer
from ..train import console, setup_torch, write_json
from .diversity import distinct_n


@torch.no_grad()
def reward_scores(model_path: Path, prompts: list[str], responses: list[str], batch_size: int = 64) -> list[float]:
    from ..stages.reward import RewardEncoder, score_sequences

    tokenizer = load_tokenizer(model_path)
    model = load_reward_model(model_path, tokenizer).eval()
    encoder = RewardEncoder(tokenizer, max_length=512, max_prompt_length=256)
    seqs = [encoder.encode_response(p, r) for p, r in zip(prompts, responses)]
    scores: list[float] = []
    for i in range(0, len(seqs), batch_size):
        scores += score_sequences(model, seqs[i : i + batch_size], tokenizer.pad_token_id).tolist()
    return scores


def run(config: EvalConfig) -> dict:
    from ..stages.pairs import resolve_prompts

    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    gold = load_scorer(config.gold) if config.gold else None
    rm_path = resolve_model_path(config.reward_model) if config.reward_model else None
    paths = {name: resolve_model_path(path) for name, path in config.models.items()}
    prompt_path = resolve_prompts(config.prompts)
    records = load_records(prompt_path, "prompt")[: config.num_prompts]
    prompts = [r.prompt for r in records for _ in range(config.samples_per_prompt)]
    save_config(config, out)
    results, samples_out = {}, []
    for name, path in paths.items():
        tokenizer = load_tokenizer(path, padding_side="left")
        model = load_causal_lm(path)
        samples = sample_responses(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                   top_p=config.top_p, batch_size=config.batch_size, seed=config.seed, description=f"eval {name}")
        row = {"model": str(path), "samples": len(samples.responses),
               "mean_length": statistics.mean(len(r.split()) for r in samples.responses),
               "distinct_2": distinct_n(samples.responses, 2), "truncated_share": samples.truncated_share}
        gold_scores = call_scorer(gold, samples.prompts, samples.responses) if gold else None
        rm_scores = reward_scores(rm_path, samples.prompts, samples.responses) if rm_path else None
        if gold_scores:
            row["mean_gold"] = statistics.mean(gold_scores)
            row["gold_stderr"] = statistics.stdev(gold_scores) / len(gold_scores) ** 0.5 if len(gold_scores) > 1 else 0.0
        if rm_scores:
            row["mean_reward"] = statistics.mean(rm_scores)
        results[name] = row
        for i, (p, r) in enumerate(zip(samples.prompts, samples.responses)):
            samples_out.append({"model": name, "prompt": p, "response": r,
                                **({"gold": round(gold_scores[i], 4)} if gold_scores else {}),
                                **({"reward": round(rm_scores[i], 4)} if rm_scores else {})})
    write_jsonl(out / "samples.jsonl", samples_out)
    table = format_table(results)
    (out / "eval.md").write_text(table + "\n")
    write_json(out / "eval.json", {"prompts": str(prompt_path), "results": results})
    console.print(table)
    return results


def format_table(results: dict[str, dict]) -> str:
    columns = [("mean_gold", "gold"), ("mean_reward", "reward"), ("mean_length", "length (words)"), ("distinct_2", "distinct-2"),
               ("truncated_share", "truncated")]
    columns = [(k, h) for k, h in columns if any(k in r for r in results.values())]
    lines = ["| model | " + " | ".join(h for _, h in columns) + " |", "|---|" + "---|" * len(columns)]
    for name, row in results.items():
        cells = []
        for key, _ in columns:
            value = row.get(key)
            cell = "" if value is None else f"{value:.3f}"
            if key == "mean_gold" and "gold_stderr" in row:
                cell += f" ± {row['gold_stderr']:.3f}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
