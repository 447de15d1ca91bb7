"""Supervised fine-tuning: next-token loss on the response tokens only (each ending in EOS, or in the chat template's
end-of-turn token), on every assistant turn of a conversation."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..config import SFTConfig, save_config
from ..console import console, progress_bar
from ..data.chat import has_template
from ..data.records import SFTExample, load_located
from ..data.tokenize import Encoder
from ..errors import DataError
from ..forward import CHUNK_SIZE, labelled_logps
from ..models.loading import apply_lora, load_causal_lm, load_tokenizer, quantization
from ..resolve import resolve_model_path, resolve_sft_data
from ..runtime import BatchStream, accumulate, optimizer_step, prepare, resume, save, save_trained, should_save, start
from ..train import Alarms, RunLog, check_gradient, make_optimizer, setup_torch, total_steps


def encode_examples(
    examples: list[SFTExample], encoder: Encoder, source: str = "data", places: list[str] | None = None
) -> list[tuple[list[int], list[int]]]:
    """(token ids, label mask) per example, the mask 1 on the tokens the loss covers. Plain-text prompts: the response
    and its EOS. Conversations, with a chat template: every assistant turn of a `messages` record, the response of a
    `prompt` + `response` one, each with the template's end-of-turn token (data.chat); without a template, a
    single-turn conversation is rendered as a transcript (render_prompt) and a multi-turn one is an error. `places`
    (records.record_place) name the records that truncation drops."""
    encoded = []
    for n, ex in enumerate(examples, start=1):
        place = places[n - 1] if places else None
        where = f"{source}: " + (place or f"record {n}" + (f" (id {ex.id!r})" if ex.id is not None else ""))
        if isinstance(ex.prompt, list) and has_template(encoder.tokenizer):
            turns = ex.messages or ex.prompt + [{"role": "assistant", "content": ex.response}]
            out = encoder.encode_conversation(turns, last_only=ex.messages is None, where=where, place=place)
        else:
            if ex.messages and sum(m["role"] == "assistant" for m in ex.messages) > 1:
                raise DataError(
                    f"{where}: field 'messages': a conversation with several assistant turns needs a chat template "
                    "to mark where each turn starts and ends, and this model's tokenizer has none; give a model that "
                    "ships one, or set it (tokenizer.chat_template = TEMPLATE; tokenizer.save_pretrained(MODEL)), or "
                    "keep one assistant turn per record"
                )
            pair = encoder.encode(ex.prompt, [ex.response], place)
            out = None if pair is None else (pair[0] + pair[1][0], [0] * len(pair[0]) + [1] * len(pair[1][0]))
        if out is not None:
            encoded.append(out)
    return encoded


def response_nll(
    model, items: list[tuple[list[int], list[int]]], pad_id: int, logits: str = "auto", chunk_size: int = CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the labelled tokens of (token ids, label mask) items, and the token count;
    `logits` and `chunk_size` as in forward.labelled_logps."""
    logps, counts = labelled_logps(model, [s for s, _ in items], [m for _, m in items], pad_id, logits, chunk_size)
    return -logps.sum(), counts.sum()


def predicted_tokens(items: list[tuple[list[int], list[int]]]) -> int:
    """Labelled tokens that get a prediction (all but a sequence's first token): the weight of a micro-batch."""
    return sum(sum(mask[1:]) for _, mask in items)


def run(config: SFTConfig) -> dict:
    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    runtime = start(config)  # joins the launcher's processes; checks device, precision and batch split first
    model_path = resolve_model_path(config.model)
    data_path = resolve_sft_data(config.data)
    places, examples = zip(*load_located(data_path, "sft", config.columns))
    tokenizer = load_tokenizer(model_path)
    encoder = Encoder(tokenizer, config.max_length, config.max_prompt_length, add_eos=True)
    encoded = encode_examples(list(examples), encoder, str(data_path), list(places))
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
