"""Reward models: Bradley-Terry training with early stopping on validation, and evaluation.

A reward model is an HF sequence-classification directory (one scalar head per objective) on a causal-LM
or encoder backbone; it reads the rendered prompt followed by the response.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import write_json
from ..config import RewardEvalConfig, RewardTrainConfig, save_config
from ..console import console, progress_bar
from ..data.records import load_records, split_pairs, write_jsonl
from ..errors import ConfigError, DataError
from ..evaluate import reward_metrics as rm
from ..evaluate.attribution import attribute_pairs
from ..evaluate.reward_metrics import length_controlled
from ..losses import bradley_terry_loss, multi_head_bradley_terry_loss, reward_centering_loss
from ..models.loading import apply_lora, load_reward_model, load_tokenizer
from ..resolve import resolve_model_path
from ..runtime import BatchStream, accumulate, optimizer_step, prepare, resume, save, save_trained, should_save, start
from ..scoring import (
    ENSEMBLE_FILE,
    SHARED_BACKBONE,
    RewardEncoder,
    SharedHead,
    encode_pairs,
    ensemble_manifest,
    ensemble_margins,
    ensemble_members,
    head_rewards_of,
    head_scores,
    load_reward_models,
    margins_of,
    objectives_of,
    pair_head_rewards,
    pair_rewards,
)
from ..train import RunLog, make_optimizer, setup_torch, total_steps


def train(config: RewardTrainConfig) -> dict:
    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    runtime = start(config)  # joins the launcher's processes; checks device, precision and batch split first
    model_path = resolve_model_path(config.model)
    pairs = load_records(config.data, "preference", config.columns)
    train_pairs, val_pairs = split_pairs(pairs, config.val_fraction, config.seed)
    tokenizer = load_tokenizer(model_path)
    encoder = RewardEncoder(tokenizer, config.max_length, config.max_prompt_length)
    train_enc, train_pairs = encode_pairs(train_pairs, encoder)
    val_enc, val_pairs = encode_pairs(val_pairs, encoder)
    console.print(encoder.encoder.report.summary(config.max_length, config.max_prompt_length))
    encoder.encoder.report.check(config.data, config.max_length, config.max_prompt_length)
    if not train_enc or not val_enc:
        raise DataError(f"{config.data}: no {'training' if not train_enc else 'validation'} pair left after truncation")
    objectives = pair_objectives(pairs, config.objectives)
    if objectives and (config.use_margin or config.center_coef):
        raise ConfigError(
            f"use_margin and center_coef apply to the one-head loss; {config.data} has per-objective labels "
            f"({', '.join(objectives)}): set use_margin=false center_coef=0, or train on pairs without `labels`"
        )
    if objectives:  # one head per objective: each pair trains the heads it has a label for
        train_signs, val_signs = label_signs(train_pairs, objectives), label_signs(val_pairs, objectives)
        for name, column in zip(objectives, train_signs.abs().sum(0).tolist()):
            if not column:
                console.print(
                    f"[bold yellow]warning:[/] no training pair has a chosen/rejected label for objective '{name}': "
                    "its head keeps the weights it starts with"
                )
    if runtime.is_main:
        save_config(config, out)
        write_jsonl(out / "train_pairs.jsonl", train_pairs)
        write_jsonl(out / "val_pairs.jsonl", val_pairs)
    margins = [p.margin or 0.0 for p in train_pairs]
    items = list(zip(train_enc, margins))
    heads = Heads(objectives, val_signs if objectives else None)
    if objectives:  # (ids, label signs per head); a pair labelled for no head trains nothing and is left out
        items = [(e, s) for e, s in zip(train_enc, train_signs) if s.any()]
        if config.ensemble > 1:
            raise ConfigError(
                f"ensemble={config.ensemble} with per-objective labels ({', '.join(objectives)}) is not supported "
                "yet: train one multi-head model (ensemble=1), or an ensemble on pairs without `labels`"
            )
    facts = {
        "stage": "reward-train",
        "model": str(model_path),
        "data": config.data,
        "processes": runtime.world,
        "train_pairs": len(train_enc),
        "val_pairs": len(val_enc),
        "truncation": encoder.encoder.report.as_dict(),
        **({"objectives": objectives, "unlabelled_pairs": len(train_enc) - len(items)} if objectives else {}),
    }
    if config.ensemble_form == "shared_backbone":
        return train_shared_heads(config, runtime, model_path, tokenizer, items, val_enc, out, facts)
    if config.ensemble == 1:
        return train_member(config, runtime, model_path, tokenizer, items, val_enc, out, out / "model", facts, heads)
    return train_ensemble(config, runtime, model_path, tokenizer, items, val_enc, out, facts)


@dataclass
class Heads:
    """The objectives a multi-head reward model learns (one head each) and the validation pairs' label signs per
    head; no objectives: one head on each pair's chosen/rejected."""

    objectives: list[str]
    val_signs: torch.Tensor | None = None


def train_ensemble(config, runtime, model_path, tokenizer, items, val_enc, out: Path, facts: dict) -> dict:
    """K members, member k with seed + k and (ensemble_bootstrap) its own bootstrap resample of the training pairs,
    each a normal `reward train` run in OUT/members/member-k whose best model is saved to OUT/model/member-k.
    OUT/model/ensemble.json is written last, once every member is saved: without it the folder is no model."""
    model_dir, started = out / "model", time.time()
    if runtime.is_main:
        (model_dir / ENSEMBLE_FILE).unlink(missing_ok=True)
        if (model_dir / "config.json").is_file():  # an earlier single model's folder
            shutil.rmtree(model_dir)
    runtime.barrier()
    members = []
    for k in range(config.ensemble):
        name = f"member-{k}"
        run_dir, member_dir = out / "members" / name, model_dir / name
        seed = config.seed + k
        if config.resume and (run_dir / "summary.json").is_file() and (member_dir / "config.json").is_file():
            console.print(f"reward train: {name} is trained already ({member_dir}); skipped")
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            sample = items
            if config.ensemble_bootstrap:
                # a bootstrap resample: as many pairs as there are, drawn with replacement (about 63% distinct)
                rng = random.Random(seed)
                sample = [items[rng.randrange(len(items))] for _ in items]
            console.print(f"reward train: ensemble {name} of {config.ensemble} (seed {seed})")
            member_config = config.model_copy(update={"seed": seed, "output_dir": str(run_dir)})
            setup_torch(seed, config.threads)  # the head's initialisation and dropout follow the member's seed
            summary = train_member(
                member_config,
                runtime,
                model_path,
                tokenizer,
                sample,
                val_enc,
                run_dir,
                member_dir,
                {**facts, "distinct_train_pairs": len({id(x) for x in sample})},
            )
        best = {key: value for key, value in summary.items() if key.startswith("best_")}
        members.append({"name": name, "seed": seed, **best})
    summary = {
        **facts,
        "ensemble": config.ensemble,
        "bootstrap": config.ensemble_bootstrap,
        "members": members,
        "model_dir": str(model_dir),
    }
    if runtime.is_main:
        models = [load_reward_models(model_dir / m["name"])[1][0] for m in members]
        margins, _, _, member_rewards = ensemble_margins(models, val_enc, tokenizer.pad_token_id, config.batch_size * 2)
        summary |= ensemble_figures(margins, member_rewards)
        summary = finish_ensemble(config, out, summary, started, f"ensemble of {config.ensemble}")
    runtime.barrier()
    return summary


def ensemble_figures(margins: list[float], member_rewards) -> dict:
    """The whole ensemble's validation accuracy, calibration and disagreement (either form)."""
    return {
        "ensemble_val_accuracy": rm.preference_accuracy(margins),
        "ensemble_val_ece": rm.expected_calibration_error(margins),
        "val_disagreement": rm.ensemble_disagreement([c + r for c, r in member_rewards]),
    }


def finish_ensemble(config, out: Path, summary: dict, started: float, label: str, form: str | None = None) -> dict:
    """ensemble.json written last (without it the folder is no model), then the run's summary and its line."""
    members, model_dir = summary["members"], Path(summary["model_dir"])
    write_json(
        model_dir / ENSEMBLE_FILE,
        {
            "kind": "reward-model ensemble",
            **({"form": form} if form else {}),
            "members": [m["name"] for m in members],
            "seeds": [m["seed"] for m in members],
            "bootstrap": config.ensemble_bootstrap,
            "trained_by": "rlhfkit reward train",
        },
    )
    summary = {"elapsed_s": round(time.time() - started, 1), **summary}
    write_json(out / "summary.json", summary)
    accuracies = ", ".join(f"{m['best_val_accuracy']:.3f}" for m in members)
    console.print(
        f"reward train: {label}: validation accuracy {summary['ensemble_val_accuracy']:.3f} "
        f"(members {accuracies}), disagreement {summary['val_disagreement']:.3f}; saved to {model_dir}"
    )
    return summary


@torch.no_grad()
def pooled_features(model, sequences: list[list[int]], pad_id: int, batch_size: int) -> torch.Tensor:
    """What the score head reads for each sequence (its last non-padding token's hidden state), [n, hidden]: caught
    on the way into the head, so every layout the scorer supports (packed or padded) gives the same features."""
    caught: list[torch.Tensor] = []
    hook = model.score.register_forward_hook(lambda module, args, output: caught.append(args[0].detach().float()))
    rows = []
    try:
        for i in range(0, len(sequences), batch_size):
            chunk = sequences[i : i + batch_size]
            caught.clear()
            head_scores(model, chunk, pad_id)
            hidden = caught[-1]
            if hidden.dim() == 3:  # the padded path: the head saw every position; take what HF's pooling takes
                ends = [next((j for j in range(len(s) - 1, -1, -1) if s[j] != pad_id), 0) for s in chunk]
                hidden = hidden[torch.arange(len(chunk)), torch.tensor(ends)]
            rows.append(hidden.cpu())
    finally:
        hook.remove()
    return torch.cat(rows)


def fit_heads(chosen, rejected, counts, init, margins, config, anchor=None) -> tuple[torch.Tensor, list[float]]:
    """K Bradley-Terry heads on frozen features: head k minimises sum_i counts[k, i] * -log sigmoid(w_k . (c_i - r_i)
    - margin_i) / n + center_coef * mean((w_k . c_i + w_k . r_i)^2) + head_l2 * |w_k - anchor|^2 (anchor: the trained
    head the members start near, else 0), by full-batch L-BFGS from `init` [K, hidden]; returns the weights and each
    head's final loss."""
    diff, total = chosen - rejected, chosen + rejected
    weights = init.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weights], lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe")
    n = diff.shape[0]

    def per_head() -> torch.Tensor:
        logits = diff @ weights.T - margins[:, None]  # [n, K]
        loss = (counts.T * torch.nn.functional.softplus(-logits)).sum(0) / n
        if config.center_coef:
            loss = loss + config.center_coef * ((total @ weights.T) ** 2).mean(0)
        offset = weights if anchor is None else weights - anchor
        return loss + config.head_l2 * (offset**2).sum(1)

    def closure():
        optimizer.zero_grad()
        loss = per_head().sum()  # the heads are independent problems: one sum, one solve
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return weights.detach(), per_head().tolist()


def train_shared_heads(config, runtime, model_path, tokenizer, items, val_enc, out: Path, facts: dict) -> dict:
    """The cheap ensemble: `model`'s backbone frozen, its pooled features computed once, and K heads fitted on them
    (member k: seed + k for its initialisation and, with ensemble_bootstrap, its own bootstrap resample), saved as one
    K-head model in OUT/model with ensemble.json (form shared_backbone) written last. From a trained one-head reward
    model the members start at its head (plus the member's noise) and head_l2 pulls them toward it, so they keep its
    scale and direction and differ where their resamples differ."""
    if runtime.world > 1:
        raise ConfigError(
            "ensemble_form=shared_backbone fits heads on features computed once, in one process: run it without a "
            f"launcher (this run has {runtime.world} processes)"
        )
    started, k = time.time(), config.ensemble
    model = load_reward_model(model_path, tokenizer, num_labels=k, new_head=True).eval()
    hidden, anchor = model.score.in_features, None
    if model.config.num_labels != k:  # a trained reward model keeps its backbone; its heads are replaced by K
        if model.config.num_labels == 1:  # its one trained head: the members start near it and are pulled to it
            anchor = model.score.weight.detach().float().clone()
        model.score = torch.nn.Linear(hidden, k, bias=model.score.bias is not None)
        model.config.num_labels = k
    pad = tokenizer.pad_token_id
    console.print(f"reward train: shared-backbone ensemble of {k}: features of {len(items)} training pairs")
    encoded = [e for e, _ in items]
    chosen = pooled_features(model, [c for c, _ in encoded], pad, config.batch_size * 2)
    rejected = pooled_features(model, [r for _, r in encoded], pad, config.batch_size * 2)
    margins = torch.tensor([m if config.use_margin else 0.0 for _, m in items], dtype=torch.float32)
    counts, init, seeds = torch.zeros(k, len(items)), torch.zeros(k, hidden), []
    std = getattr(model.config, "initializer_range", 0.02)
    for member in range(k):
        seed = config.seed + member
        seeds.append(seed)
        if config.ensemble_bootstrap:  # the separate form's resample: as many pairs as there are, with replacement
            rng = random.Random(seed)
            for _ in items:
                counts[member, rng.randrange(len(items))] += 1
        else:
            counts[member] = 1.0
        init[member] = torch.randn(hidden, generator=torch.Generator().manual_seed(seed)) * std
        if anchor is not None:
            init[member] += anchor[0]
    weights, losses = fit_heads(chosen, rejected, counts, init, margins, config, anchor)
    with torch.no_grad():
        model.score.weight.copy_(weights)
        if model.score.bias is not None:
            model.score.bias.zero_()  # a Bradley-Terry head's offset cancels in every margin
    names = [f"member-{m}" for m in range(k)]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    members = [SharedHead(model, m) for m in range(k)]
    margins_val, _, _, member_rewards = ensemble_margins(members, val_enc, pad, config.batch_size * 2)
    per_member = [
        {
            "name": name,
            "seed": seed,
            "train_loss": round(loss, 6),
            "distinct_train_pairs": int((counts[m] > 0).sum()),
            "best_val_accuracy": rm.preference_accuracy([c - r for c, r in zip(*member_rewards[m])]),
        }
        for m, (name, seed, loss) in enumerate(zip(names, seeds, losses))
    ]
    summary = {
        **facts,
        "ensemble": k,
        "ensemble_form": SHARED_BACKBONE,
        "bootstrap": config.ensemble_bootstrap,
        "members": per_member,
        "model_dir": str(out / "model"),
        **ensemble_figures(margins_val, member_rewards),
    }
    model_dir = out / "model"
    if (model_dir / ENSEMBLE_FILE).is_file() or (model_dir / "config.json").is_file():
        shutil.rmtree(model_dir)  # an earlier model or ensemble in this folder: replaced whole
    save_trained(runtime, model, tokenizer, model_dir, config, "reward-train", summary, state=model.state_dict())
    return finish_ensemble(config, out, summary, started, f"shared-backbone ensemble of {k}", SHARED_BACKBONE)


def train_member(
    config, runtime, model_path, tokenizer, items, val_enc, out: Path, model_dir: Path, facts: dict, heads=None
) -> dict:
    """One reward model: Bradley-Terry training (per head, with `heads`' objectives) with early stopping on the
    validation pairs, the best state saved to model_dir; `out` holds the run's metrics and checkpoints."""
    objectives, val_signs = (heads.objectives, heads.val_signs) if heads else ([], None)
    model = load_reward_model(model_path, tokenizer, num_labels=max(1, len(objectives)), new_head=True)
    if objectives:
        if model.config.num_labels != len(objectives):
            raise ConfigError(
                f"model: {model_path} is a reward model with {model.config.num_labels} head(s); objectives name "
                f"{len(objectives)} ({', '.join(objectives)}): start from a backbone or a model with those heads"
            )
        # the heads' names travel with the saved model: consumers choose a head by name (`head: brevity`)
        model.config.id2label = dict(enumerate(objectives))
        model.config.label2id = {name: i for i, name in enumerate(objectives)}
    if config.lora:
        model = apply_lora(model, config.lora, task_type="SEQ_CLS")
    model.train()
    steps = total_steps(len(items), config.batch_size, config.grad_accum, config.epochs, config.max_steps)
    optimizer, scheduler = make_optimizer(model, config.lr, config.weight_decay, config.warmup_ratio, steps)
    model, optimizer = prepare(runtime, model, optimizer, config)
    stream = BatchStream(items, config.batch_size, config.seed)
    first_step, state = resume(runtime, config, out, model, optimizer, scheduler, stream)
    log = RunLog(out, keep_until=first_step if first_step else None, enabled=runtime.is_main, config=config)
    pad = tokenizer.pad_token_id

    def weights_now() -> dict | None:
        """Every process: a copy of the weights (under FSDP gathered from the shards, held by the main process)."""
        return runtime.full_state(model) if runtime.fsdp else copy.deepcopy(runtime.unwrap(model).state_dict())

    def validate() -> dict:
        if objectives:
            with runtime.accelerator.autocast():
                chosen, rejected = head_rewards_of(runtime.unwrap(model), val_enc, pad, config.batch_size * 2)
            return head_metrics(chosen - rejected, val_signs, objectives)
        with runtime.accelerator.autocast():
            m, _, _ = margins_of(runtime.unwrap(model), val_enc, pad, config.batch_size * 2)
        loss = sum(-torch.nn.functional.logsigmoid(torch.tensor(x)).item() for x in m) / len(m)
        return {
            "val_accuracy": rm.preference_accuracy(m),
            "val_ece": rm.expected_calibration_error(m),
            "val_loss": loss,
        }

    def better(a: dict, b: dict | None) -> bool:
        if b is None:
            return True
        key = {"accuracy": "val_accuracy", "ece": "val_ece", "loss": "val_loss"}[config.early_stop_metric]
        return a[key] > b[key] if key == "val_accuracy" else a[key] < b[key]

    def labelled(batch: list) -> int:
        return len(batch) if not objectives else int(sum(s.abs().sum().item() for _, s in batch))

    def loss_sum(batch: list) -> tuple[torch.Tensor, dict]:
        if objectives:  # Bradley-Terry per head over the labelled (pair, head) entries; the step divides by their count
            chosen, rejected = pair_head_rewards(model, [e for e, _ in batch], pad)
            signs = torch.stack([s for _, s in batch]).to(chosen.device)
            loss = multi_head_bradley_terry_loss(chosen, rejected, signs)
            right = ((chosen - rejected) * signs > 0).float().sum().item()  # accuracy over labelled entries
            return loss, {"accuracy": right}
        chosen, rejected = pair_rewards(model, [e for e, _ in batch], pad)
        margin = torch.tensor([m for _, m in batch], device=chosen.device) if config.use_margin else None
        loss = bradley_terry_loss(chosen, rejected, margin)
        if config.center_coef:
            loss = loss + config.center_coef * reward_centering_loss(chosen, rejected)
        return loss * len(batch), {"accuracy": (chosen > rejected).float().sum().item()}

    best, best_step, stale = state.get("best"), state.get("best_step", 0), state.get("stale", 0)
    best_state = state.get("best_state")
    stopped_early, step = False, first_step
    with progress_bar("reward train", steps) as advance:
        advance(first_step)
        for step in range(first_step + 1, steps + 1):
            micro = [runtime.shard(next(stream)) for _ in range(config.grad_accum)]
            stats = accumulate(runtime, model, micro, labelled, loss_sum, step)
            optimizer_step(runtime, model, optimizer, scheduler, config.max_grad_norm)
            row: dict = {}
            if step % config.eval_every == 0 or step == steps:
                row = validate()
                if better(row, best):
                    best, best_step, stale = row, step, 0
                    best_state = weights_now()
                else:
                    stale += 1
            if step % config.log_every == 0 or row:
                log.log(step, loss=stats["loss"], accuracy=stats["accuracy"], lr=scheduler.get_last_lr()[0], **row)
            advance(loss=stats["loss"], **({"val_acc": row["val_accuracy"]} if row else {}))
            if config.patience and stale >= config.patience:
                console.print(
                    f"early stop at step {step}: validation {config.early_stop_metric} has not improved for "
                    f"{stale} evaluations"
                )
                stopped_early = True
                break
            if should_save(config, step, steps):
                save(
                    runtime,
                    out,
                    step,
                    model,
                    optimizer,
                    scheduler,
                    stream,
                    {"best": best, "best_step": best_step, "stale": stale, "best_state": best_state},
                    config.keep_checkpoints,
                )
    if best is None:  # resumed at the last step: nothing left to run
        best = validate()
        best_state = weights_now()
    summary = {
        **facts,
        "steps_run": step,
        "best_step": best_step,
        "stopped_early": stopped_early,
        "resumed_from": first_step or None,
        **{f"best_{k}": v for k, v in best.items()},
        "model_dir": str(model_dir),
    }
    save_trained(runtime, model, tokenizer, model_dir, config, "reward-train", summary, state=best_state)
    if runtime.is_main:
        summary = log.summary(**summary)
        per_head = "".join(
            f"; {name} {best[f'val_accuracy_{name}']:.3f}"
            for name in objectives
            if best.get(f"val_accuracy_{name}") is not None
        )
        console.print(
            f"reward train: best validation accuracy {best['val_accuracy']:.3f} (ECE {best['val_ece']:.3f}"
            f"{per_head}) at step {best_step}; model saved to {model_dir}"
        )
    runtime.barrier()
    return summary


def pair_objectives(pairs: list, configured: list[str] | None) -> list[str]:
    """The heads to train: `objectives` as configured, else the names the pairs' labels use (first seen first);
    [] (one head on chosen/rejected, as without labels) when no pair has labels."""
    if configured:
        return [name.strip() for name in configured]
    return list(dict.fromkeys(name for pair in pairs for name in (pair.labels or {})))


def label_signs(pairs: list, objectives: list[str]) -> torch.Tensor:
    """[pairs, heads]: +1 where the chosen response wins for that objective, -1 where the rejected one does, 0 for a
    tie or no label (no gradient to that head). The objective 'overall', unless labelled, is the pair's own label."""
    sign = {"chosen": 1.0, "rejected": -1.0, "tie": 0.0}
    rows = [
        [sign[(p.labels or {}).get(name, "chosen" if name == "overall" else "tie")] for name in objectives]
        for p in pairs
    ]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(pairs), len(objectives))


def head_metrics(margins: torch.Tensor, signs: torch.Tensor, objectives: list[str]) -> dict:
    """Validation metrics of a multi-head model: per head on the pairs labelled for it (accuracy, ECE, loss), and
    their means over the heads that have labelled pairs (what early stopping reads)."""
    row: dict = {}
    for h, name in enumerate(objectives):
        labelled = signs[:, h] != 0
        oriented = (margins[labelled, h] * signs[labelled, h]).tolist()  # > 0: the head agrees with the label
        row[f"val_accuracy_{name}"] = rm.preference_accuracy(oriented) if oriented else None
        row[f"val_ece_{name}"] = rm.expected_calibration_error(oriented) if oriented else None
        row[f"val_loss_{name}"] = (
            -torch.nn.functional.logsigmoid(torch.tensor(oriented)).mean().item() if oriented else None
        )
    for metric in ("accuracy", "ece", "loss"):
        values = [row[f"val_{metric}_{name}"] for name in objectives if row[f"val_{metric}_{name}"] is not None]
        row[f"val_{metric}"] = sum(values) / len(values) if values else float("nan")
    return row


def evaluate(config: RewardEvalConfig) -> dict:
    out = Path(config.output_dir)
    setup_torch(0, config.threads)
    model_path = resolve_model_path(config.model)
    pairs = load_records(config.data, "preference", config.columns)
    tokenizer = load_tokenizer(ensemble_members(model_path)[0])
    encoder = RewardEncoder(tokenizer, config.max_length, config.max_prompt_length)
    encoded, pairs = encode_pairs(pairs, encoder)
    encoder.encoder.report.check(config.data, config.max_length, config.max_prompt_length)
    _, models = load_reward_models(model_path, tokenizer)  # an ensemble: every member
    model = models[0]
    save_config(config, out)
    margins, chosen, rejected, member_rewards = ensemble_margins(
        models, encoded, tokenizer.pad_token_id, config.batch_size, config.ensemble_method, config.ensemble_coef
    )
    len_c = [len(p.chosen.split()) for p in pairs]
    len_r = [len(p.rejected.split()) for p in pairs]
    summary = {
        "stage": "reward-eval",
        "model": str(model_path),
        "data": config.data,
        "pairs": len(pairs),
        **margin_metrics(margins, chosen, rejected, len_c, len_r, config.bins),
        "truncation": encoder.encoder.report.as_dict(),
    }
    if len(models) > 1:
        summary["ensemble"] = ensemble_report(model_path, member_rewards, config)
    categories: dict[str, list[float]] = defaultdict(list)
    for pair, m in zip(pairs, margins):
        if pair.category:
            categories[pair.category].append(m)
    if categories:
        summary["accuracy_by_category"] = {c: rm.preference_accuracy(ms) for c, ms in sorted(categories.items())}
    gold = [
        (m, p.metadata["gold_chosen"] - p.metadata["gold_rejected"])
        for p, m in zip(pairs, margins)
        if "gold_chosen" in p.metadata and "gold_rejected" in p.metadata
    ]
    decisive = [(m, d) for m, d in gold if abs(d) >= config.gold_min_diff]
    if decisive:
        summary["gold_accuracy"] = sum((m > 0) == (d > 0) for m, d in decisive) / len(decisive)
        summary["gold_pairs"] = len(decisive)
        summary["label_matches_gold"] = sum(d > 0 for _, d in decisive) / len(decisive)
    summary.update(length_controlled(margins, len_c, len_r, config.length_tolerance))
    if model.config.num_labels > 1 or any(p.labels for p in pairs):
        summary["heads"], summary["head_correlation"] = per_head_metrics(model, tokenizer, encoded, pairs, config)
    if config.attributions:
        n = config.attributions
        summary["attributions"], summary["top_words"], worst = attribute_pairs(
            model, tokenizer, encoder, pairs[:n], encoded[:n], config.attribution_steps
        )
        summary["attribution_method"] = {
            "method": "integrated gradients over the input embeddings (captum LayerIntegratedGradients)"
            + (" of the ensemble's first member" if len(models) > 1 else ""),
            "baseline": "response tokens replaced by the pad token, prompt and special tokens kept",
            "steps": config.attribution_steps,
            "max_completeness_error": worst,
        }
    write_jsonl(
        out / "scores.jsonl",
        (
            {"id": p.id, "reward_chosen": round(c, 5), "reward_rejected": round(r, 5)}
            for p, c, r in zip(pairs, chosen, rejected)
        ),
    )
    write_json(out / "summary.json", summary)
    line = (
        f"reward eval on {len(pairs)} pairs: accuracy {summary['accuracy']:.3f}, ECE {summary['ece']:.3f}, mean "
        f"margin {summary['mean_margin']:.3f}"
    )
    if "gold_accuracy" in summary:
        line += (
            f", accuracy against gold {summary['gold_accuracy']:.3f} on {summary['gold_pairs']} pairs with "
            f"|gold diff| >= {config.gold_min_diff}"
        )
    console.print(
        line + f"; length correlation {summary['length_correlation']:.3f}, prefers the longer response in "
        f"{summary['longer_preferred_share']:.1%}"
    )
    if "ensemble" in summary:
        ens = summary["ensemble"]
        console.print(
            f"ensemble of {len(ens['members'])} ({config.ensemble_method}"
            + (f", coef {config.ensemble_coef}" if config.ensemble_method == "uwo" else "")
            + f"): accuracy {summary['accuracy']:.3f} (mean-combined {ens['mean_accuracy']:.3f}); members "
            + ", ".join(f"{m['accuracy']:.3f}" for m in ens["members"])
            + f"; disagreement (std across members, mean over responses) {ens['disagreement']:.3f}"
        )
    console.print(length_line(summary, config.length_tolerance))
    for name, head in summary.get("heads", {}).items():
        console.print(head_line(name, head))
    if summary.get("head_correlation"):
        corr = ", ".join(f"{k} {v:.3f}" for k, v in summary["head_correlation"].items())
        console.print(f"correlation between heads (rewards of every response): {corr}")
    if summary.get("top_words"):
        top = summary["top_words"]
        console.print(
            f"words that raise the score most: {', '.join(w for w, _, _ in top['positive'][:5]) or '-'}; "
            f"lower it most: {', '.join(w for w, _, _ in top['negative'][:5]) or '-'} "
            f"(integrated gradients on {len(summary['attributions'])} pairs)"
        )
    return summary


def margin_metrics(margins, won, lost, len_won, len_lost, bins: int) -> dict:
    """What `reward eval` reports of a set of pairs (overall, and per head): accuracy, calibration, mean margin, and
    the length bias of the rewards of the preferred (`won`) and the other (`lost`) responses."""
    return {
        "accuracy": rm.preference_accuracy(margins),
        "ece": rm.expected_calibration_error(margins, bins),
        "mean_margin": sum(margins) / len(margins),
        "length_correlation": rm.pearson(won + lost, [float(x) for x in len_won + len_lost]),
        "longer_preferred_share": rm.longer_preferred_share(margins, len_won, len_lost),
        "reliability": rm.reliability_bins(margins, bins),
    }


def ensemble_report(path: Path, member_rewards: list[tuple[list[float], list[float]]], config) -> dict:
    """Each member's accuracy and calibration, the mean-combined ensemble's accuracy, and the disagreement."""
    from ..scoring import combine_rewards

    names = ensemble_manifest(path)["members"]  # either form: the manifest names the members
    members = []
    for name, (chosen, rejected) in zip(names, member_rewards):
        margins = [c - r for c, r in zip(chosen, rejected)]
        members.append(
            {"name": name, "accuracy": rm.preference_accuracy(margins), "ece": rm.expected_calibration_error(margins)}
        )
    mean_chosen = combine_rewards([c for c, _ in member_rewards], "mean")
    mean_rejected = combine_rewards([r for _, r in member_rewards], "mean")
    return {
        "method": config.ensemble_method,
        "coef": config.ensemble_coef,
        "members": members,
        "mean_accuracy": rm.preference_accuracy([c - r for c, r in zip(mean_chosen, mean_rejected)]),
        "disagreement": rm.ensemble_disagreement([c + r for c, r in member_rewards]),
    }


def per_head_metrics(model, tokenizer, encoded: list, pairs: list, config: RewardEvalConfig) -> tuple[dict, dict]:
    """Every head of the model against its objective's labels: accuracy, ECE with its reliability bins, mean margin,
    length bias and, where the pairs' metadata carries `gold_objectives`, accuracy against that objective's gold;
    and the Pearson correlation between every two heads' rewards over all responses. A head whose objective no
    pair labels is measured against the pairs' overall chosen/rejected (`labels: overall`)."""
    objectives = objectives_of(model.config)
    chosen, rejected = head_rewards_of(model, encoded, tokenizer.pad_token_id, config.batch_size)
    labelled_names = {name for p in pairs for name in (p.labels or {})}
    heads = {}
    for h, name in enumerate(objectives):
        own = name in labelled_names
        signs = label_signs(pairs, [name if own else "overall"])[:, 0]
        keep = [i for i, s in enumerate(signs.tolist()) if s != 0]
        # each pair oriented so that its winner for this objective comes first
        first = [(chosen if signs[i] > 0 else rejected)[i, h].item() for i in keep]
        second = [(rejected if signs[i] > 0 else chosen)[i, h].item() for i in keep]
        margins = [a - b for a, b in zip(first, second)]
        if not margins:
            heads[name] = {"labels": "objective", "pairs": 0}
            continue
        won = [signs[i] > 0 for i in keep]
        len_w = [len((p.chosen if w else p.rejected).split()) for p, w in zip((pairs[i] for i in keep), won)]
        len_l = [len((p.rejected if w else p.chosen).split()) for p, w in zip((pairs[i] for i in keep), won)]
        head = {
            "labels": "objective" if own else "overall",
            "pairs": len(margins),
            **margin_metrics(margins, first, second, len_w, len_l, config.bins),
        }
        gold = [
            (m, g["winner"] - g["loser"])
            for m, i in zip(margins, keep)
            if (g := gold_of(pairs[i], name, signs[i] > 0)) is not None
        ]
        decisive = [(m, d) for m, d in gold if abs(d) >= config.gold_min_diff]
        if decisive:
            head["gold_accuracy"] = sum((m > 0) == (d > 0) for m, d in decisive) / len(decisive)
            head["gold_pairs"] = len(decisive)
        heads[name] = head
    rewards = torch.cat([chosen, rejected])  # [responses, heads]
    correlation = {
        f"{a}~{b}": rm.pearson(rewards[:, i].tolist(), rewards[:, j].tolist())
        for i, a in enumerate(objectives)
        for j, b in enumerate(objectives)
        if i < j
    }
    return heads, correlation


def gold_of(pair, objective: str, chosen_won: bool) -> dict | None:
    """The objective's gold scores from a pair's metadata (`gold_objectives: {NAME: {chosen, rejected}}`, written
    by `rlhfkit pairs objectives=...`), as {winner, loser} for the objective's label; None without them."""
    gold = (pair.metadata.get("gold_objectives") or {}).get(objective)
    if not isinstance(gold, dict) or not {"chosen", "rejected"} <= gold.keys():
        return None
    c, r = float(gold["chosen"]), float(gold["rejected"])
    return {"winner": c, "loser": r} if chosen_won else {"winner": r, "loser": c}


def head_line(name: str, head: dict) -> str:
    if not head["pairs"]:
        return f"head {name}: no pair labelled for it"
    line = (
        f"head {name} on {head['pairs']} pairs ({head['labels']} labels): accuracy {head['accuracy']:.3f}, ECE "
        f"{head['ece']:.3f}, length correlation {head['length_correlation']:.3f}"
    )
    if "gold_accuracy" in head:
        line += f", accuracy against its gold {head['gold_accuracy']:.3f} on {head['gold_pairs']} pairs"
    return line


def length_line(summary: dict, tolerance: float) -> str:
    def acc(key: str, count: str) -> str:
        return f"{summary[key]:.3f} on {summary[count]} pairs" if summary[key] is not None else "no pairs"

    return (
        f"length-controlled accuracy (word counts within {tolerance:.0%}): "
        f"{acc('length_controlled_accuracy', 'length_controlled_pairs')}; "
        f"chosen shorter: {acc('accuracy_chosen_shorter', 'chosen_shorter_pairs')}; chosen longer: "
        f"{acc('accuracy_chosen_longer', 'chosen_longer_pairs')}"
    )
