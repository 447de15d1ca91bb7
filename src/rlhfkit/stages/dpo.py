"""Direct preference optimisation and its variants (IPO, SLiC hinge, robust DPO, SimPO, ORPO).

Reference log-probs are computed once, before training, and cached in the run folder (`ref_logps.pt`,
keyed by reference model and data), so no reference model stays in memory while the policy trains. With
LoRA and no separate reference, the reference is the policy with its adapter disabled.
"""

from __future__ import annotations

import hashlib
import json
import random
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import DPOConfig, save_config
from ..console import console, progress_bar
from ..data.records import load_located
from ..data.tokenize import Encoder
from ..forward import CHUNK_SIZE, response_logps
from ..losses import dpo_loss, orpo_loss, simpo_loss
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

REFERENCE_FREE = ("simpo", "orpo")


def pair_logps(
    model, items: list[tuple], pad_id: int, logits: str = "auto", chunk_size: int = CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen sum logps, rejected sum logps, chosen token counts, rejected token counts): one forward for both;
    `logits` and `chunk_size` as in forward.response_logps."""
    prompts, responses = [p for p, _, _ in items] * 2, [c for _, c, _ in items] + [r for _, _, r in items]
    logps, counts = response_logps(model, prompts, responses, pad_id, logits, chunk_size)
    n = len(items)
    return logps[:n], logps[n:], counts[:n], counts[n:]


@torch.no_grad()
def reference_logps(
    model,
    items: list[tuple],
    pad_id: int,
    batch_size: int,
    description: str,
    logits: str = "auto",
    chunk_size: int = CHUNK_SIZE,
) -> torch.Tensor:
    """[n, 2] reference log-probs (chosen, rejected) for every pair, in data order."""
    was_training = model.training
    model.eval()
    out = []
    context = model.disable_adapter() if is_peft(model) else nullcontext()
    with context, progress_bar(description, len(items)) as advance:
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            c, r, _, _ = pair_logps(model, chunk, pad_id, logits, chunk_size)
            out.append(torch.stack([c, r], dim=1).cpu())
            advance(len(chunk))
    model.train(was_training)
    return torch.cat(out)


def preference_loss(
    config: DPOConfig, chosen_logps, rejected_logps, chosen_tokens, rejected_tokens, ref_logps
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example loss, chosen rewards, rejected rewards for the configured loss_type. `*_logps` are summed
    response log-probs, `*_tokens` their token counts (SimPO and ORPO use the per-token mean), `ref_logps` [N, 2]
    the reference's chosen and rejected log-probs."""
    if config.loss_type == "simpo":
        return simpo_loss(
            chosen_logps / chosen_tokens, rejected_logps / rejected_tokens, beta=config.beta, gamma=config.simpo_gamma
        )
    if config.loss_type == "orpo":
        return orpo_loss(chosen_logps / chosen_tokens, rejected_logps / rejected_tokens, beta=config.beta)
    return dpo_loss(
        chosen_logps,
        rejected_logps,
        ref_logps[:, 0],
        ref_logps[:, 1],
        beta=config.beta,
        loss_type=config.loss_type,
        label_smoothing=config.label_smoothing,
    )


def run(config: DPOConfig) -> dict:
    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    runtime = start(config)  # joins the launcher's processes; checks device, precision and batch split first
    model_path = resolve_model_path(config.model)
    ref_path = resolve_model_path(config.ref_model) if config.ref_model else model_path
    pairs = load_located(config.data, "preference", config.columns)
    tokenizer = load_tokenizer(model_path)
    encoder = Encoder(tokenizer, config.max_length, config.max_prompt_length, add_eos=True)
    items = []
    for place, pair in pairs:
        enc = encoder.encode(pair.prompt, [pair.chosen, pair.rejected], place)
        if enc is not None:
            items.append((enc[0], enc[1][0], enc[1][1]))
    console.print(encoder.report.summary(config.max_length, config.max_prompt_length))
    encoder.report.check(config.data, config.max_length, config.max_prompt_length)
    if runtime.is_main:
        save_config(config, out)

    model = load_causal_lm(model_path, quantization_config=quantization(config.lora, config.device))
    if config.lora:
        model = apply_lora(model, config.lora)
    model.to(runtime.device)
    pad = tokenizer.pad_token_id
    ref = torch.zeros(len(items), 2)
    if config.loss_type not in REFERENCE_FREE:
        key = hashlib.sha256(
            json.dumps(
                [
                    file_stamps(ref_path),
                    file_stamps(Path(config.data)),
                    config.max_length,
                    config.max_prompt_length,
                    len(items),
                ]
            ).encode()
        ).hexdigest()
        reference = load_causal_lm(ref_path).to(runtime.device) if config.ref_model else model
        compute = lambda: reference_logps(  # noqa: E731
            reference, items, pad, config.batch_size * 2, "reference log-probs", config.logits, config.logits_chunk_size
        )
        # the main process computes (or reuses) the cache; the others read it
        if runtime.is_main:
            ref = cached_reference(out / "ref_logps.pt", key, compute)
        runtime.barrier()
        if not runtime.is_main:
            ref = torch.load(out / "ref_logps.pt")["logps"]
        del reference  # frees a separate reference model (the policy stays as `model`)

    indices = list(range(len(items)))
    random.Random(config.seed).shuffle(indices)
    n_val = int(len(indices) * config.val_fraction)
    val_idx, train_idx = indices[:n_val], indices[n_val:]
    steps = total_steps(len(train_idx), config.batch_size, config.grad_accum, config.epochs, config.max_steps)
    optimizer, scheduler = make_optimizer(model, config.lr, config.weight_decay, config.warmup_ratio, steps)
    model, optimizer = prepare(runtime, model, optimizer, config)
    sft_coef = config.sft_coef or (1.0 if config.loss_type == "orpo" else 0.0)
    stream = BatchStream(train_idx, config.batch_size, config.seed)
    first_step, state = resume(runtime, config, out, model, optimizer, scheduler, stream)
    log = RunLog(out, keep_until=first_step if first_step else None, enabled=runtime.is_main, config=config)
    model.train()
    alarms = Alarms(enabled=runtime.is_main)

    def loss_sum(idx: list[int], on=None) -> tuple[torch.Tensor, dict]:
        chunk = [items[i] for i in idx]
        chosen_logps, rejected_logps, chosen_tokens, rejected_tokens = pair_logps(
            on if on is not None else model, chunk, pad, config.logits, config.logits_chunk_size
        )
        losses, chosen_rewards, rejected_rewards = preference_loss(
            config, chosen_logps, rejected_logps, chosen_tokens, rejected_tokens, ref[idx].to(chosen_logps.device)
        )
        loss = losses.sum()
        if sft_coef:
            loss = loss + sft_coef * (-(chosen_logps / chosen_tokens).sum())
        stats = {
            "reward_chosen": chosen_rewards.sum().item(),
            "reward_rejected": rejected_rewards.sum().item(),
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().sum().item(),
            "reward_margin": (chosen_rewards - rejected_rewards).sum().item(),
            "logp_chosen": (chosen_logps / chosen_tokens).sum().item(),
            "logp_rejected": (rejected_logps / rejected_tokens).sum().item(),
        }
        return loss, stats

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
        return {f"val_{k}": v / len(val_idx) for k, v in totals.items()}

    first = state.get("first") if first_step else validate()
    last = state.get("last", first)
    with progress_bar(f"dpo ({config.loss_type})", steps) as advance:
        advance(first_step)
        for step in range(first_step + 1, steps + 1):
            micro = [runtime.shard(next(stream)) for _ in range(config.grad_accum)]
            agg = accumulate(runtime, model, micro, len, loss_sum, step)
            grad_norm = optimizer_step(runtime, model, optimizer, scheduler, config.max_grad_norm)
            check_gradient(alarms, step, grad_norm)
            row = validate() if (step % config.eval_every == 0 or step == steps) else {}
            if row:
                last = row
            if step % config.log_every == 0 or row:
                log.log(step, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, **agg, **row)
            advance(loss=agg["loss"], acc=agg["reward_accuracy"])
            if should_save(config, step, steps):
                save(
                    runtime,
                    out,
                    step,
                    model,
                    optimizer,
                    scheduler,
                    stream,
                    {"first": first, "last": last},
                    config.keep_checkpoints,
                )
    summary = {
        "stage": "dpo",
        "loss_type": config.loss_type,
        "model": str(model_path),
        "reference": None if config.loss_type in REFERENCE_FREE else str(ref_path),
        "data": config.data,
        "steps": steps,
        "resumed_from": first_step or None,
        "processes": runtime.world,
        "train_pairs": len(train_idx),
        "val_pairs": len(val_idx),
        "before": first,
        "after": last,
        "truncation": encoder.report.as_dict(),
        "model_dir": str(out / "model"),
    }
    save_trained(runtime, model, tokenizer, out / "model", config, "dpo", summary)
    if runtime.is_main:
        summary = log.summary(**summary)
        acc = last.get("val_reward_accuracy")
        console.print(
            f"dpo: {steps} steps"
            + (f", validation reward accuracy {acc:.3f}" if acc is not None else "")
            + f"; model saved to {out / 'model'}"
        )
    runtime.barrier()
    return summary
