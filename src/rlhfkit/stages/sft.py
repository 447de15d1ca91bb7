"""Supervised fine-tuning: next-token loss on response tokens only; each response ends in EOS."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..config import SFTConfig, save_config
from ..data.records import SFTExample, load_records
from ..data.tokenize import Encoder, pad_sequences
from ..errors import DataError
from ..losses import sequence_logps
from ..models.loading import apply_lora, load_causal_lm, load_tokenizer, resolve_model_path, save_model
from ..train import RunLog, check_finite, console, forever, make_optimizer, progress_bar, setup_torch, total_steps


def resolve_sft_data(data: str) -> Path:
    if data == "default":
        from ..demo.build import ensure_default

        return ensure_default().sft_data
    return Path(data)


def encode_examples(examples: list[SFTExample], encoder: Encoder) -> list[tuple[list[int], list[int]]]:
    encoded = []
    for ex in examples:
        out = encoder.encode(ex.prompt, [ex.response])
        if out is not None:
            encoded.append((out[0], out[1][0]))
    return encoded


def response_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood per response token over the batch, and the token count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Shift: logits at t predict token t+1.
    logps, counts = sequence_logps(logits[:, :-1], batch["input_ids"][:, 1:], batch["response_mask"][:, 1:])
    return -logps.sum() / counts.sum().clamp(min=1), counts.sum()


def run(config: SFTConfig) -> dict:
    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    model_path = resolve_model_path(config.model)
    data_path = resolve_sft_data(config.data)
    examples = load_records(data_path, "sft")
    tokenizer = load_tokenizer(model_path)
    encoder = Encoder(tokenizer, config.max_length, config.max_prompt_length, add_eos=True)
    encoded = encode_examples(examples, encoder)
    console.print(encoder.report.summary(config.max_length, config.max_prompt_length))
    if not encoded:
        raise DataError(f"{data_path}: no example left after truncation; raise max_length")
    random.Random(config.seed).shuffle(encoded)
    n_val = int(len(encoded) * config.val_fraction)
    val, train = encoded[:n_val], encoded[n_val:]

    save_config(config, out)
    model = load_causal_lm(model_path)
    if config.lora:
        model = apply_lora(model, config.lora)
    model.train()
    steps = total_steps(len(train), config.batch_size, config.grad_accum, config.epochs, config.max_steps)
    optimizer, scheduler = make_optimizer(model, config.lr, config.weight_decay, config.warmup_ratio, steps)
    log = RunLog(out)
    micro = max(1, config.batch_size)
    stream = forever(train, micro, config.seed)

    def collate(items):
        return pad_sequences([p for p, _ in items], [r for _, r in items], tokenizer.pad_token_id)

    def validate() -> float | None:
        if not val:
            return None
        model.eval()
        total, tokens = 0.0, 0.0
        with torch.no_grad():
            for i in range(0, len(val), micro):
                loss, count = response_nll(model, collate(val[i : i + micro]))
                total += loss.item() * count.item()
                tokens += count.item()
        model.train()
        return total / max(tokens, 1)

    first_val = validate()
    val_loss = first_val
    with progress_bar("sft", steps) as advance:
        for step in range(1, steps + 1):
            step_loss = 0.0
            for _ in range(config.grad_accum):
                loss, _ = response_nll(model, collate(next(stream)))
                check_finite(loss, step)
                (loss / config.grad_accum).backward()
                step_loss += loss.item() / config.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm).item()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            row = {}
            if step % config.eval_every == 0 or step == steps:
                val_loss = validate()
                row["val_loss"] = val_loss
            if step % config.log_every == 0 or step == steps or row:
                log.log(step, loss=step_loss, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, **row)
            advance(loss=step_loss)
    save_model(model, tokenizer, out / "model", merge_lora=config.lora.merge if config.lora else True)
    summary = log.summary(
        stage="sft", model=str(model_path), data=str(data_path), steps=steps, train_examples=len(train), val_examples=len(val),
        val_loss_before=first_val, val_loss=val_loss, truncation=encoder.report.as_dict(), model_dir=str(out / "model"),
    )
    console.print(f"sft: {steps} steps, validation loss {first_val} -> {val_loss}; model saved to {out / 'model'}")
    return summary
