"""KTO (Ethayarajh et al. 2024): learn from a thumb up or down on one response, no pair.

Each example's reward is beta * (policy - reference) log-prob of its completion; a desirable one is pushed above,
an undesirable one below, the reference point z = max(KL(policy || reference), 0). As in the paper, KL is
estimated from mismatched prompt/completion pairs: example i's prompt with the completion of another example
(a fixed seeded derangement), so the estimate measures drift on text the policy was not trained to prefer.
Reference log-probs of the matched and the mismatched pairs are computed once and cached in the run folder
(`ref_logps.pt`), as in DPO. Unequal numbers of desirable and undesirable examples are balanced by weights
(the rarer label weighs n_majority / n_minority unless both weights are set), reported in summary.json.
"""

from __future__ import annotations

import hashlib
import json
import random
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import KTOConfig, save_config
from ..console import console, progress_bar
from ..data.records import load_located
from ..data.tokenize import Encoder
from ..errors import DataError
from ..forward import response_logps
from ..losses import kto_loss
from ..models.loading import apply_lora, is_peft, load_causal_lm, load_tokenizer, quantization
from ..resolve import resolve_model_path
from ..runtime import BatchStream, accumulate, optimizer_step, prepare, resume, save, save_trained, should_save, start
from ..train import (
    Alarms,
    RunLog,
    batches,
    cached_reference,
    check_gradient,
    file_stamps,
    make_optimizer,
    setup_torch,
    total_steps,
)

# the paper's advice: (desirable_weight * n_desirable) / (undesirable_weight * n_undesirable) in [1, 4/3]
BALANCED = (1.0, 4 / 3)


def balance_weights(n_desirable: int, n_undesirable: int, config: KTOConfig) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight): the configured ones, or weights that make both labels weigh the same."""
    if config.desirable_weight is not None and config.undesirable_weight is not None:
        return config.desirable_weight, config.undesirable_weight
    desirable_weight = config.desirable_weight or max(1.0, n_undesirable / max(n_desirable, 1))
    undesirable_weight = config.undesirable_weight or max(1.0, n_desirable / max(n_undesirable, 1))
    return desirable_weight, undesirable_weight


def mismatched(n: int, seed: int) -> list[int]:
    """For every example, the index of another one whose completion it is paired with for the KL estimate."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = [0] * n
    for j, i in enumerate(order):
        partner[i] = order[(j + 1) % n]  # a cycle through a shuffled order: nobody keeps their own completion
    return partner


def example_logps(model, items: list[tuple], idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(matched, mismatched) summed completion log-probs of examples `idx`: one forward for both."""
    prompts = [items[i][0] for i in idx]
    completions = [items[i][1] for i in idx] + [items[i][2] for i in idx]
    logps, _ = response_logps(model, prompts * 2, completions, pad_id)
    return logps[: len(idx)], logps[len(idx) :]


@torch.no_grad()
def reference_logps(model, items: list[tuple], pad_id: int, batch_size: int) -> torch.Tensor:
    """[n, 2] reference log-probs (matched, mismatched completion) of every example, in data order."""
    was_training = model.training
    model.eval()
    out = []
    context = model.disable_adapter() if is_peft(model) else nullcontext()
    with context, progress_bar("reference log-probs", len(items)) as advance:
        for i in range(0, len(items), batch_size):
            idx = list(range(i, min(i + batch_size, len(items))))
            matched, other = example_logps(model, items, idx, pad_id)
            out.append(torch.stack([matched, other], dim=1).cpu())
            advance(len(idx))
    model.train(was_training)
    return torch.cat(out)


def run(config: KTOConfig) -> dict:
    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    runtime = start(config)
    model_path = resolve_model_path(config.model)
    ref_path = resolve_model_path(config.ref_model) if config.ref_model else model_path
    records = load_located(config.data, "unpaired", config.columns)
    tokenizer = load_tokenizer(model_path)
    encoder = Encoder(tokenizer, config.max_length, config.max_prompt_length, add_eos=True)
    encoded = []
    for place, record in records:
        enc = encoder.encode(record.prompt, [record.completion], place)
        if enc is not None:
            encoded.append((enc[0], enc[1][0], record.label))
    console.print(encoder.report.summary(config.max_length, config.max_prompt_length))
    encoder.report.check(config.data, config.max_length, config.max_prompt_length)
    if len(encoded) < 2:
        raise DataError(f"{config.data}: KTO needs at least 2 examples (the KL estimate pairs each with another)")
    partner = mismatched(len(encoded), config.seed)
    # (prompt, completion, another example's completion cut to this prompt's budget, label)
    items = [
        (prompt, completion, encoded[partner[i]][1][: config.max_length - len(prompt)], label)
        for i, (prompt, completion, label) in enumerate(encoded)
    ]
    if runtime.is_main:
        save_config(config, out)

    model = load_causal_lm(model_path, quantization_config=quantization(config.lora, config.device))
    if config.lora:
        model = apply_lora(model, config.lora)
    model.to(runtime.device)
    pad = tokenizer.pad_token_id
    key = hashlib.sha256(
        json.dumps(
            ["kto", file_stamps(ref_path), file_stamps(Path(config.data)), config.max_length,
             config.max_prompt_length, config.seed, len(items)]
        ).encode()
    ).hexdigest()  # fmt: skip
    # the main process computes (or reuses) the cache; the others read it
    if runtime.is_main:

        def compute() -> torch.Tensor:
            ref_model = load_causal_lm(ref_path).to(runtime.device) if config.ref_model else model
            return reference_logps(ref_model, items, pad, config.batch_size * 2)

        ref = cached_reference(out / "ref_logps.pt", key, compute)
    runtime.barrier()
    if not runtime.is_main:
        ref = torch.load(out / "ref_logps.pt")["logps"]

    indices = list(range(len(items)))
    random.Random(config.seed).shuffle(indices)
    n_val = int(len(indices) * config.val_fraction)
    val_idx, train_idx = indices[:n_val], indices[n_val:]
    n_desirable = sum(items[i][3] for i in train_idx)
    n_undesirable = len(train_idx) - n_desirable
    desirable_weight, undesirable_weight = balance_weights(n_desirable, n_undesirable, config)
    balance = (desirable_weight * n_desirable) / max(undesirable_weight * n_undesirable, 1e-8)
    console.print(
        f"kto: {n_desirable} desirable, {n_undesirable} undesirable training examples; weights "
        f"{desirable_weight:.3g} / {undesirable_weight:.3g} (balance {balance:.3g})"
    )
    if not BALANCED[0] <= balance <= BALANCED[1] + 1e-9:
        console.print(
            f"[yellow]WARNING[/yellow] desirable_weight * n_desirable / (undesirable_weight * n_undesirable) is "
            f"{balance:.3g}; the KTO paper advises 1 to 4/3 (leave both weights null to balance them)"
        )
    steps = total_steps(len(train_idx), config.batch_size, config.grad_accum, config.epochs, config.max_steps)
    optimizer, scheduler = make_optimizer(model, config.lr, config.weight_decay, config.warmup_ratio, steps)
    model, optimizer = prepare(runtime, model, optimizer, config)
    stream = BatchStream(train_idx, config.batch_size, config.seed)
    first_step, state = resume(runtime, config, out, model, optimizer, scheduler, stream)
    log = RunLog(out, keep_until=first_step if first_step else None, enabled=runtime.is_main, config=config)
    model.train()
    alarms = Alarms(enabled=runtime.is_main)

    def loss_sum(idx: list[int], on=None) -> tuple[torch.Tensor, dict]:
        net = on if on is not None else model
        idx = list(idx)
        policy_logps, policy_other = example_logps(net, items, idx, pad)
        ref_logps = ref[idx].to(policy_logps.device)
        desirable = torch.tensor([items[i][3] for i in idx], device=policy_logps.device)
        # the batch's KL estimate from its mismatched pairs, averaged over processes (each calls this as often);
        # kto_loss clamps it at 0 and lets no gradient through
        (kl_sum,) = runtime.sum([(policy_other.detach() - ref_logps[:, 1]).mean().item()])
        kl = torch.tensor(kl_sum / runtime.world, device=policy_logps.device)
        losses = kto_loss(
            policy_logps, ref_logps[:, 0], desirable, kl, config.beta, desirable_weight, undesirable_weight
        )
        rewards = (config.beta * (policy_logps - ref_logps[:, 0])).detach()
        sign = desirable.to(rewards.dtype) * 2 - 1
        stats = {
            "kl": kl.item() * len(idx),
            "reward_accuracy": (rewards * sign > 0).float().sum().item(),  # desirable above 0, undesirable below
            "reward_signed": (rewards * sign).sum().item(),
            "desirable_share": desirable.float().sum().item(),
            "reward_desirable_sum": rewards[desirable].sum().item(),
            "reward_undesirable_sum": rewards[~desirable].sum().item(),
        }
        return losses.sum(), stats

    def validate() -> dict:
        if not val_idx:
            return {}
        plain = runtime.unwrap(model)
        plain.eval()
        totals: dict[str, float] = {}
        with torch.no_grad(), runtime.accelerator.autocast():
            for idx in batches(val_idx, config.batch_size * 2, shuffle=False, seed=0):
                loss, stats = loss_sum(idx, on=plain)
                for k, v in {"loss": loss.item(), **stats}.items():
                    totals[k] = totals.get(k, 0.0) + v
        plain.train()
        n_good = sum(items[i][3] for i in val_idx)
        row = {f"val_{k}": v / len(val_idx) for k, v in totals.items() if not k.endswith("_sum")}
        # per-label means: the desirable examples' reward should rise, the undesirable ones' fall
        row["val_reward_desirable"] = totals["reward_desirable_sum"] / max(n_good, 1)
        row["val_reward_undesirable"] = totals["reward_undesirable_sum"] / max(len(val_idx) - n_good, 1)
        return row

    first = state.get("first") if first_step else validate()
    last = state.get("last", first)
    with progress_bar("kto", steps) as advance:
        advance(first_step)
        for step in range(first_step + 1, steps + 1):
            micro = [runtime.shard(next(stream)) for _ in range(config.grad_accum)]
            agg = accumulate(runtime, model, micro, len, loss_sum, step)
            agg = {k: v for k, v in agg.items() if not k.endswith("_sum")}
            grad_norm = optimizer_step(runtime, model, optimizer, scheduler, config.max_grad_norm)
            check_gradient(alarms, step, grad_norm)
            row = validate() if (step % config.eval_every == 0 or step == steps) else {}
            if row:
                last = row
            if step % config.log_every == 0 or row:
                log.log(step, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, **agg, **row)
            advance(loss=agg["loss"], acc=agg["reward_accuracy"])
            if should_save(config, step, steps):
                save(runtime, out, step, model, optimizer, scheduler, stream, {"first": first, "last": last},
                     config.keep_checkpoints)  # fmt: skip
    summary = {
        "stage": "kto",
        "model": str(model_path),
        "reference": str(ref_path),
        "data": config.data,
        "steps": steps,
        "resumed_from": first_step or None,
        "processes": runtime.world,
        "train_examples": len(train_idx),
        "val_examples": len(val_idx),
        "desirable": n_desirable,
        "undesirable": n_undesirable,
        "desirable_weight": desirable_weight,
        "undesirable_weight": undesirable_weight,
        "balance": balance,
        "before": first,
        "after": last,
        "truncation": encoder.report.as_dict(),
        "model_dir": str(out / "model"),
    }
    save_trained(runtime, model, tokenizer, out / "model", config, "kto", summary)
    if runtime.is_main:
        summary = log.summary(**summary)
        acc = last.get("val_reward_accuracy")
        console.print(
            f"kto: {steps} steps"
            + (f", validation reward accuracy {acc:.3f}" if acc is not None else "")
            + f"; model saved to {out / 'model'}"
        )
    runtime.barrier()
    return summary
