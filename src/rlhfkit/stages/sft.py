"""Supervised fine-tuning: next-token loss on response tokens only; each response ends in EOS."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..config import SFTConfig, save_config
from ..console import console, progress_bar
from ..data.records import SFTExample, load_located
from ..data.tokenize import Encoder
from ..forward import CHUNK_SIZE, response_logps
from ..models.loading import apply_lora, load_causal_lm, load_tokenizer, quantization
from ..resolve import resolve_model_path, resolve_sft_data
from ..runtime import BatchStream, accumulate, optimizer_step, prepare, resume, save, save_trained, should_save, start
from ..train import Alarms, RunLog, check_gradient, make_optimizer, setup_torch, total_steps


def encode_examples(
    examples: list[SFTExample], encoder: Encoder, places: list[str] | None = None
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of the examples the truncation rule keeps; `places` name the dropped ones."""
    encoded = []
    for i, ex in enumerate(examples):
        out = encoder.encode(ex.prompt, [ex.response], places[i] if places else None)
        if out is not None:
            encoded.append((out[0], out[1][0]))
    return encoded


def response_nll(
    model, items: list[tuple[list[int], list[int]]], pad_id: int, logits: str = "auto", chunk_size: int = CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the response tokens of (prompt ids, response ids) items, and the token
    count; `logits` and `chunk_size` as in forward.response_logps."""
    logps, counts = response_logps(model, [p for p, _ in items], [r for _, r in items], pad_id, logits, chunk_size)
    return -logps.sum(), counts.sum()


def predicted_tokens(items: list[tuple[list[int], list[int]]]) -> int:
    """Response tokens that get a prediction (all but a sequence's first token): the weight of a micro-batch."""
    return sum(len(r) - (1 if not p else 0) for p, r in items)


def run(config: SFTConfig) -> dict:
    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    runtime = start(config)  # joins the launcher's processes; checks device, precision and batch split first
    model_path = resolve_model_path(config.model)
    data_path = resolve_sft_data(config.data)
    places, examples = zip(*load_located(data_path, "sft", config.columns))
    tokenizer = load_tokenizer(model_path)
    encoder = Encoder(tokenizer, config.max_length, config.max_prompt_length, add_eos=True)
    encoded = encode_examples(list(examples), encoder, list(places))
    console.print(encoder.report.summary(config.max_length, config.max_prompt_length))
    encoder.report.check(str(data_path), config.max_length, config.max_prompt_length)
    random.Random(config.seed).shuffle(encoded)
    n_val = int(len(encoded) * config.val_fraction)
    val, train = encoded[:n_val], encoded[n_val:]

    if runtime.is_main:
        save_config(config, out)
    model = load_causal_lm(model_path, quantization_config=quantization(config.lora, config.device))
    if config.lora:
        model = apply_lora(model, config.lora)
    model.train()
    steps = total_steps(len(train), config.batch_size, config.grad_accum, config.epochs, config.max_steps)
    optimizer, scheduler = make_optimizer(model, config.lr, config.weight_decay, config.warmup_ratio, steps)
    model, optimizer = prepare(runtime, model, optimizer, config)
    stream = BatchStream(train, config.batch_size, config.seed)
    first_step, state = resume(runtime, config, out, model, optimizer, scheduler, stream)
    log = RunLog(out, keep_until=first_step if first_step else None, enabled=runtime.is_main, config=config)
    pad = tokenizer.pad_token_id
    alarms = Alarms(enabled=runtime.is_main)

    def nll(on, items) -> tuple[torch.Tensor, torch.Tensor]:
        return response_nll(on, items, pad, config.logits, config.logits_chunk_size)

    def validate() -> float | None:
        if not val:
            return None
        plain = runtime.unwrap(model)
        plain.eval()
        total, tokens = 0.0, 0.0
        with torch.no_grad(), runtime.accelerator.autocast():
            for i in range(0, len(val), config.batch_size):
                loss, count = nll(plain, val[i : i + config.batch_size])
                total += loss.item()
                tokens += count.item()
        plain.train()
        return total / max(tokens, 1)

    first_val = state.get("first_val") if first_step else validate()
    val_loss = state.get("val_loss", first_val)
    with progress_bar("sft", steps) as advance:
        advance(first_step)
        for step in range(first_step + 1, steps + 1):
            micro = [runtime.shard(next(stream)) for _ in range(config.grad_accum)]
            # the step's loss is the mean over every response token of every process and micro-batch
            stats = accumulate(runtime, model, micro, predicted_tokens, lambda b: (nll(model, b)[0], {}), step)
            grad_norm = optimizer_step(runtime, model, optimizer, scheduler, config.max_grad_norm)
            check_gradient(alarms, step, grad_norm)
            row = {}
            if step % config.eval_every == 0 or step == steps:
                val_loss = validate()
                row["val_loss"] = val_loss
            if step % config.log_every == 0 or step == steps or row:
                log.log(step, loss=stats["loss"], lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, **row)
            advance(loss=stats["loss"])
            if should_save(config, step, steps):
                save(
                    runtime,
                    out,
                    step,
                    model,
                    optimizer,
                    scheduler,
                    stream,
                    {"first_val": first_val, "val_loss": val_loss},
                    config.keep_checkpoints,
                )
    summary = {
        "stage": "sft",
        "model": str(model_path),
        "data": str(data_path),
        "steps": steps,
        "resumed_from": first_step or None,
        "train_examples": len(train),
        "val_examples": len(val),
        "processes": runtime.world,
        "val_loss_before": first_val,
        "val_loss": val_loss,
        "truncation": encoder.report.as_dict(),
        "model_dir": str(out / "model"),
    }
    save_trained(runtime, model, tokenizer, out / "model", config, "sft", summary)
    if runtime.is_main:
        summary = log.summary(**summary)
        console.print(f"sft: {steps} steps, validation loss {first_val} -> {val_loss}; model saved to {out / 'model'}")
    runtime.barrier()
    return summary
