"""Best-of-n: sample n responses per prompt, keep the one the reward scores highest; optionally fine-tune on
the winners (rejection sampling, as in Llama 2's RLHF rounds). The analytic KL of best-of-n to the
sampling policy is log n - (n - 1) / n (Stiennon et al. 2020)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from .. import online
from ..atomic import write_json
from ..config import BoNConfig, SFTConfig, build_config, save_config
from ..console import console
from ..data.records import SFTExample, load_records, write_jsonl
from ..evaluate.diversity import distinct_n
from ..models.loading import load_causal_lm, load_tokenizer
from ..resolve import resolve_model_path
from ..rollout import sample_with
from ..scoring import call_scorer, load_scorer
from ..train import RunLog, setup_torch


def run(config: BoNConfig) -> dict:
    from ..resolve import resolve_prompts

    out = Path(config.output_dir)
    sft_config = (
        build_config(
            SFTConfig,
            {"model": config.model, "data": str(out / "best.jsonl"), "output_dir": str(out / "sft"), **config.sft},
            source="bon config, sft",
        )
        if config.finetune
        else None
    )
    setup_torch(config.seed, config.threads)
    reward_fn = online.RewardFunction(config.rewards)
    gold = load_scorer(config.gold) if config.gold else None
    path = resolve_model_path(config.model)
    records = load_records(resolve_prompts(config.prompts), "prompt", config.columns)[: config.num_prompts]
    tokenizer = load_tokenizer(path, padding_side="left")
    model = load_causal_lm(path)
    save_config(config, out)
    prompts = [r.prompt for r in records for _ in range(config.n)]
    samples = sample_with(config, model, tokenizer, prompts, f"best-of-{config.n}")
    scores, _ = reward_fn(samples.prompts, samples.responses)
    grouped = scores.view(len(records), config.n)
    best = grouped.argmax(1)
    winners = [samples.responses[i * config.n + int(b)] for i, b in enumerate(best)]
    best_records = [
        SFTExample(
            prompt=r.prompt,
            response=w if w.startswith(" ") else " " + w,
            id=r.id,
            category=r.category,
            metadata={"reward": round(grouped[i, int(best[i])].item(), 4), "n": config.n},
        )
        for i, (r, w) in enumerate(zip(records, winners))
        if w.strip()
    ]
    write_jsonl(out / "best.jsonl", best_records)
    summary = {
        "stage": "bon",
        "model": str(path),
        "n": config.n,
        "prompts": len(records),
        "kl_bon": math.log(config.n) - (config.n - 1) / config.n,
        "reward_best": grouped.max(1).values.mean().item(),
        "reward_mean": scores.mean().item(),
        "response_words_best": statistics.mean(len(w.split()) for w in winners),
        "distinct_2_best": distinct_n(winners, 2),
        "truncated_share": samples.truncated_share,
    }
    if gold is not None:
        gold_all = torch.tensor(call_scorer(gold, samples.prompts, samples.responses)).view(len(records), config.n)
        summary["gold_best"] = gold_all.gather(1, best[:, None]).mean().item()
        summary["gold_mean"] = gold_all.mean().item()
    RunLog(out).log(0, **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    console.print(
        f"best-of-{config.n}: reward {summary['reward_mean']:.3f} -> {summary['reward_best']:.3f}"
        + (f", gold {summary['gold_mean']:.3f} -> {summary['gold_best']:.3f}" if gold else "")
        + f" (KL_bon {summary['kl_bon']:.3f}); winners in {out / 'best.jsonl'}"
    )
    if sft_config is not None:
        from . import sft

        console.rule("rejection sampling: fine-tuning on the winners")
        summary["sft"] = sft.run(sft_config)
    write_json(out / "summary.json", summary)
    return summary
