"""`rlhfkit pareto`: the Pareto front of several objectives under user weights.

The objectives are the heads of a multi-head reward model (`reward_model`), or any reward sources (`rewards`, one per
objective); each has a gold judge (`golds`, by objective name; `default:NAME` for the default task's quality and
brevity). For every weighting w (given, or a grid over the simplex) the combined reward is online.weighted_reward,
sum_s w_s * score_s, the same combination every online stage and best-of-n uses, and one point is measured:

- `method: bon` (default): the policy's `n` samples per prompt are drawn and scored once (every head in one forward
  pass, every gold once); each weighting only re-ranks them, so a sweep of many weightings costs one sampling run.
  The point is the mean gold, per objective, of each prompt's best of n by the weighted reward.
- `method: grpo`: a short GRPO run per weighting from the same policy, rewards weighted by w; the point is the mean
  gold, per objective, of its samples on the held-out prompts.

A point is dominated when another is at least as good on every objective's gold and better on one
(rlhfkit.evaluate.pareto_front, every gold maximised). Writes pareto.json, pareto.md, pareto.png and, for bon, the
scored samples in samples.jsonl.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ..atomic import write_json
from ..config import EnsembleSettings, GRPOConfig, HeadChoice, RewardSpec, SamplingSettings, check_keys, save_config
from ..console import console
from ..data.records import load_records, write_jsonl
from ..errors import ConfigError
from ..evaluate.pareto import pareto_front
from ..scoring import DEFAULT_OBJECTIVES, call_scorer, load_scorer


class ParetoConfig(SamplingSettings, EnsembleSettings):
    """`rlhfkit pareto`: sweep the weights of several objectives, measure every objective's gold, draw the front."""

    model: str = Field("default", description="the policy to sample from (best-of-n) or to start from (grpo)")
    prompts: str = Field("heldout", description="prompt JSONL the points are measured on, or 'default' / 'heldout'")
    reward_model: str | None = Field(
        None, description="a multi-head reward model: one objective per head (or per entry of `heads`)"
    )
    heads: list[HeadChoice] | None = Field(
        None, description="the heads of reward_model to weigh, by index or name, in order (null: every head)"
    )
    rewards: list[RewardSpec] | None = Field(
        None,
        description="or the reward sources, one per objective (instead of reward_model); each source's own weight is "
        "replaced by the sweep's",
    )
    golds: dict[str, str] = Field(
        default_factory=dict,
        description="the gold judge (module:function) of each objective, by objective name; an objective not named "
        "here whose name the default task knows (quality, brevity) gets default:NAME",
    )
    weights: list[list[float]] | None = Field(
        None,
        description="the weightings, one number >= 0 per objective each, e.g. [[1, 0], [0.5, 0.5], [0, 1]]; scaled to "
        "sum to 1 (null: the grid)",
    )
    grid: int = Field(
        5,
        ge=2,
        description="when weights is null: every weighting with steps of 1/(grid-1) on the simplex (grid points for "
        "two objectives)",
    )
    method: Literal["bon", "grpo"] = Field(
        "bon", description="bon: best-of-n per weighting on one set of samples; grpo: a short GRPO run per weighting"
    )
    n: int = Field(8, ge=2, description="bon: samples per prompt")
    num_prompts: int | None = Field(32, gt=0, description="use the first N prompts (null: all)")
    samples_per_prompt: int = Field(2, gt=0, description="grpo: samples per held-out prompt to measure each policy")
    grpo: dict[str, Any] = Field(
        default_factory=lambda: {"steps": 10, "batch_size": 4, "group_size": 4},
        description="grpo: keys of every GRPO run (`rlhfkit config show grpo`, except model, rewards, output_dir)",
    )
    output_dir: str = Field("runs/pareto", description="writes pareto.json, pareto.md, pareto.png, samples.jsonl")
    seed: int = Field(0, description="sampling and training seed")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")

    @model_validator(mode="after")
    def _check(self):
        if (self.reward_model is None) == (self.rewards is None):
            raise ValueError(
                "give exactly one of reward_model (a multi-head model) or rewards (one source per objective)"
            )
        if self.heads is not None and self.reward_model is None:
            raise ValueError("heads chooses heads of reward_model; with rewards, give one source per objective")
        if self.heads is not None and len(self.heads) < 2 or self.rewards is not None and len(self.rewards) < 2:
            raise ValueError("a front needs at least two objectives (heads or rewards)")
        for i, weighting in enumerate(self.weights or []):
            if any(w < 0 for w in weighting):
                raise ValueError(f"weights[{i}] {weighting}: every weight must be >= 0")
            if not sum(weighting) > 0:
                raise ValueError(f"weights[{i}] {weighting}: at least one weight must be > 0")
        if self.weights is not None and not self.weights:
            raise ValueError("weights is empty; give at least one weighting, or null for the grid")
        fixed = {"model", "rewards", "output_dir"}
        check_keys("grpo", GRPOConfig, self.grpo, fixed, {"rewards": [{"function": "-"}]})
        return self


# ---------------------------------------------------------------- weightings and objectives


def simplex_grid(objectives: int, points: int) -> list[list[float]]:
    """Every weighting of `objectives` numbers in steps of 1/(points - 1) that sums to 1, the first objective's
    weight falling: [[1, 0], [0.75, 0.25], ..., [0, 1]] for two objectives and five points."""
    steps = points - 1
    rows = [c for c in itertools.product(range(steps, -1, -1), repeat=objectives) if sum(c) == steps]
    return [[c / steps for c in row] for row in rows]


def normalised(weights: list[list[float]], objectives: list[str]) -> list[list[float]]:
    """Each weighting scaled to sum to 1; a ConfigError names a weighting of the wrong length."""
    out = []
    for i, weighting in enumerate(weights):
        if len(weighting) != len(objectives):
            raise ConfigError(
                f"weights[{i}] {weighting}: {len(weighting)} number(s) for {len(objectives)} objectives "
                f"({', '.join(objectives)}); give one weight per objective, in that order"
            )
        total = sum(weighting)
        out.append([w / total for w in weighting])
    return out


def objective_sources(config: ParetoConfig) -> list[RewardSpec]:
    """One reward source per objective: each chosen head of reward_model (every head when `heads` is null), or the
    rewards as given."""
    if config.rewards is not None:
        return list(config.rewards)
    from transformers import AutoConfig

    from ..resolve import resolve_model_path
    from ..scoring import ensemble_members, head_index, objectives_of, require_reward_model

    path = resolve_model_path(config.reward_model)
    require_reward_model(path, config.reward_model, "train one with `rlhfkit reward train`")
    model_config = AutoConfig.from_pretrained(ensemble_members(path)[0])
    if config.heads is not None:
        heads = [head_index(model_config, head, f"heads[{i}]", path) for i, head in enumerate(config.heads)]
    else:
        heads = list(range(len(objectives_of(model_config))))
    if len(heads) < 2:
        raise ConfigError(
            f"reward_model={config.reward_model}: one head only, and a front needs two objectives; train a head per "
            "objective (pairs with `labels`, e.g. `rlhfkit pairs objectives=[quality,brevity]`) or give rewards"
        )
    settings = {"ensemble_method": config.ensemble_method, "ensemble_coef": config.ensemble_coef}
    return [RewardSpec(model=config.reward_model, head=head, **settings) for head in heads]


def gold_specs(objectives: list[str], golds: dict[str, str]) -> list[str]:
    """The gold judge of each objective: named in golds, else default:NAME for the default task's objectives."""
    unknown = sorted(set(golds) - set(objectives))
    if unknown:
        raise ConfigError(f"golds: no objective named {', '.join(unknown)} (objectives: {', '.join(objectives)})")
    if len(set(objectives)) != len(objectives):
        raise ConfigError(f"objectives {objectives}: an objective is named twice; weigh each source once")
    specs = []
    for name in objectives:
        if name in golds:
            specs.append(golds[name])
        elif name in DEFAULT_OBJECTIVES:
            specs.append(f"default:{name}")
        else:
            raise ConfigError(
                f"golds: objective '{name}' has no gold judge; give one, e.g. 'golds={{{name}: module:function}}'"
            )
    return specs


# ---------------------------------------------------------------- measuring the points


def bon_points(config: ParetoConfig, reward_fn, golds: list, weightings: list[list[float]], prompt_texts: list) -> dict:
    """Sample n per prompt once, score every source and gold once; each weighting's point re-ranks those samples."""
    import torch

    from ..models.loading import load_causal_lm, load_tokenizer
    from ..online import weighted_reward
    from ..resolve import resolve_model_path
    from ..rollout import sample_with
    from .bon_sweep import expected_best_of_n, kl_bon

    path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(path, padding_side="left")
    samples = sample_with(
        config,
        load_causal_lm(path),
        tokenizer,
        [p for p in prompt_texts for _ in range(config.n)],
        f"sampling {config.n} per prompt",
    )
    scores, _ = reward_fn.source_scores(samples.prompts, samples.responses)  # [samples, objectives]
    gold = torch.tensor([call_scorer(g, samples.prompts, samples.responses) for g in golds]).T
    names = reward_fn.objectives
    write_jsonl(
        Path(config.output_dir) / "samples.jsonl",
        [
            {
                "prompt_index": i // config.n,
                "prompt": prompt,
                "response": response,
                "truncated": truncated,
                "scores": {name: round(float(v), 5) for name, v in zip(names, scores[i])},
                "gold": {name: round(float(v), 5) for name, v in zip(names, gold[i])},
            }
            for i, (prompt, response, truncated) in enumerate(
                zip(samples.prompts, samples.responses, samples.truncated)
            )
        ],
    )
    shape = (len(prompt_texts), config.n)
    words = np.array([len(r.split()) for r in samples.responses], float).reshape(shape)
    scores_np, gold_np = scores.numpy().astype(float), gold.numpy().astype(float)
    values_np = np.nan_to_num(scores_np, nan=0.0)  # a NaN score (no room left for the response) weighs nothing
    points = []
    for weighting in weightings:
        total = weighted_reward(torch.from_numpy(scores_np), weighting).numpy().reshape(shape)
        total = np.where(np.isnan(total), -1e30, total)  # a response with no score is never the best
        per_prompt = {
            f"gold_{name}": expected_best_of_n(total, gold_np[:, j].reshape(shape), config.n)
            for j, name in enumerate(names)
        }
        proxy = {
            name: expected_best_of_n(total, values_np[:, j].reshape(shape), config.n) for j, name in enumerate(names)
        }
        points.append(
            {
                "weights": weighting,
                "gold": {name: float(per_prompt[f"gold_{name}"].mean()) for name in names},
                "gold_stderr": {name: stderr(per_prompt[f"gold_{name}"]) for name in names},
                "proxy": {name: float(values.mean()) for name, values in proxy.items()},
                "words": float(expected_best_of_n(total, words, config.n).mean()),
            }
        )
    policy = {
        "gold": {name: float(gold_np[:, j].mean()) for j, name in enumerate(names)},
        "proxy": {name: float(np.nanmean(scores.numpy()[:, j])) for j, name in enumerate(names)},
        "words": float(words.mean()),
    }
    return {"points": points, "policy": policy, "samples": len(samples.responses), "kl_bon": kl_bon(config.n)}


def grpo_points(
    config: ParetoConfig, reward_fn, golds: list, weightings: list[list[float]], prompt_texts: list
) -> dict:
    """A short GRPO run per weighting (rewards weighted by it), each policy measured on the held-out prompts."""
    from . import grpo

    out = Path(config.output_dir)
    points = []
    policy = measure_policy(config, config.model, reward_fn, golds, prompt_texts)
    for i, weighting in enumerate(weightings):
        rewards = [{**spec.model_dump(exclude_none=True), "weight": w} for spec, w in zip(reward_fn.specs, weighting)]
        values = {
            "seed": config.seed,
            "threads": config.threads,
            "gold": None,
            "max_new_tokens": config.max_new_tokens,
            **config.grpo,
            "model": config.model,
            "rewards": rewards,
            "output_dir": str(out / f"grpo-{i}"),
        }
        console.rule(f"pareto: GRPO with weights {format_weights(weighting)}")
        grpo.run(GRPOConfig(**values))
        measured = measure_policy(config, str(out / f"grpo-{i}" / "model"), reward_fn, golds, prompt_texts)
        points.append({"weights": weighting, **measured, "run_dir": str(out / f"grpo-{i}")})
    return {"points": points, "policy": policy, "samples": len(prompt_texts) * config.samples_per_prompt}


def measure_policy(config: ParetoConfig, model: str, reward_fn, golds: list, prompt_texts: list) -> dict:
    """A policy's mean gold (with its standard error) and mean score per objective on the held-out prompts."""
    from ..models.loading import load_causal_lm, load_tokenizer
    from ..resolve import resolve_model_path
    from ..rollout import sample_with

    path = resolve_model_path(model)
    samples = sample_with(
        config,
        load_causal_lm(path),
        load_tokenizer(path, padding_side="left"),
        [p for p in prompt_texts for _ in range(config.samples_per_prompt)],
        f"measuring {path.name}",
    )
    scores, _ = reward_fn.source_scores(samples.prompts, samples.responses)
    names = reward_fn.objectives
    gold = [np.array(call_scorer(g, samples.prompts, samples.responses)) for g in golds]
    return {
        "gold": {name: float(values.mean()) for name, values in zip(names, gold)},
        "gold_stderr": {name: stderr(values) for name, values in zip(names, gold)},
        "proxy": {name: float(np.nanmean(scores.numpy()[:, j])) for j, name in enumerate(names)},
        "words": float(np.mean([len(r.split()) for r in samples.responses])),
    }


def stderr(values: np.ndarray) -> float | None:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None


# ---------------------------------------------------------------- the stage


def run(config: ParetoConfig) -> dict:
    from ..online import RewardFunction
    from ..report.plots import plot_pareto
    from ..resolve import resolve_prompts
    from ..train import setup_torch

    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    reward_fn = RewardFunction(objective_sources(config))
    names = reward_fn.objectives
    gold_names = gold_specs(names, config.golds)
    golds = [load_scorer(spec, option=f"golds.{name}") for name, spec in zip(names, gold_names)]
    weightings = normalised(config.weights or simplex_grid(len(names), config.grid), names)
    prompt_path = resolve_prompts(config.prompts)
    records = load_records(prompt_path, "prompt", config.columns)[: config.num_prompts]
    if not records:
        raise ConfigError(f"prompts: {prompt_path} has no prompts")
    save_config(config, out)
    measure = bon_points if config.method == "bon" else grpo_points
    measured = measure(config, reward_fn, golds, weightings, [r.prompt for r in records])
    points = measured["points"]
    front = pareto_front([[p["gold"][name] for name in names] for p in points])
    for i, p in enumerate(points):
        p["on_front"] = i in front
        p["dominated"] = i not in front
    result = {
        "stage": "pareto",
        "method": config.method,
        "model": config.model,
        "prompts": str(prompt_path),
        "num_prompts": len(records),
        "n": config.n if config.method == "bon" else None,
        "samples": measured["samples"],
        "objectives": names,
        "golds": dict(zip(names, gold_names)),
        "sources": [spec.model_dump(exclude_none=True, exclude={"weight"}) for spec in reward_fn.specs],
        "combination": "reward = sum over objectives of weight * score (rlhfkit.online.weighted_reward)",
        "points": points,
        "front": front,
        "policy": measured["policy"],
    }
    if "kl_bon" in measured:
        result["kl_bon"] = measured["kl_bon"]
    table = format_table(result)
    (out / "pareto.md").write_text(f"# Pareto front: {', '.join(names)} ({config.method})\n\n{table}\n")
    result["plot"] = str(plot_pareto(result, out / "pareto.png"))
    write_json(out / "pareto.json", result)
    console.print(table)
    console.print(
        f"pareto: {len(front)} of {len(points)} weightings on the front; {out / 'pareto.json'}, {result['plot']}"
    )
    return result


def format_weights(weighting: list[float]) -> str:
    return " / ".join(f"{w:.2f}" for w in weighting)


def format_table(result: dict) -> str:
    names = result["objectives"]
    header = ["weights (" + " / ".join(names) + ")", *(f"gold {n}" for n in names), *(f"score {n}" for n in names)]
    header += ["words", "on the front"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label: str, p: dict, front: str) -> str:
        cells = [label, *(f"{p['gold'][n]:.3f}" for n in names), *(f"{p['proxy'][n]:.3f}" for n in names)]
        return "| " + " | ".join([*cells, f"{p['words']:.1f}", front]) + " |"

    for p in result["points"]:
        lines.append(row(format_weights(p["weights"]), p, "yes" if p["on_front"] else "dominated"))
    start = "the policy, no selection" if result["method"] == "bon" else "the starting policy"
    lines.append(row(start, result["policy"], "-"))
    chosen = "each prompt's best of n" if result["method"] == "bon" else "each policy's samples"
    lines += ["", f"gold and score: means over {chosen} on {result['num_prompts']} prompts; every gold maximised."]
    return "\n".join(lines)
