"""Small parts every training stage shares: seeding, threads, optimizer and schedule, the run log, progress bars,
and the padding-free forward that gives response log-probs."""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .data.tokenize import pack_rows, pad_sequences
from .errors import TrainingError
from .losses import sequence_logps
from .models.loading import base_model

console = Console(stderr=True)


def setup_torch(seed: int, threads: int | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def total_steps(num_examples: int, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None) -> int:
    if max_steps:
        return max_steps
    per_epoch = max(1, math.ceil(num_examples / (batch_size * grad_accum)))
    return max(1, int(math.ceil(per_epoch * epochs)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, warmup_ratio: float, steps: int):
    """AdamW with linear warm-up then linear decay to 10% of the peak (no decay on biases and norms)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel does AdamW's ~10 elementwise passes in one (~3x faster on CPU); same update
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)
    warmup = int(steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches(items: list, batch_size: int, shuffle: bool, seed: int) -> Iterator[list]:
    order = list(range(len(items)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [items[j] for j in order[i : i + batch_size]]


def forever(items: list, batch_size: int, seed: int) -> Iterator[list]:
    """Shuffled batches of exactly `batch_size`, epoch after epoch (a new order each epoch; an epoch's last partial
    batch is completed from the next one, so every batch splits evenly among processes)."""
    epoch, pending = 0, []
    while True:
        order = list(range(len(items)))
        random.Random(seed + epoch).shuffle(order)
        pending += order
        while len(pending) >= batch_size:
            yield [items[j] for j in pending[:batch_size]]
            pending = pending[batch_size:]
        epoch += 1


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"step {step}: the loss is {loss.item()}; lower lr or check the data (the last saved model is kept)"
        )


class RunLog:
    """metrics.jsonl (one row per logged step, appended and flushed) and summary.json for a run folder. A resumed run
    keeps the rows up to its checkpoint's step (`keep_until`); only the main process of a distributed run writes."""

    def __init__(self, run_dir: str | Path, keep_until: int | None = None, enabled: bool = True):
        self.dir = Path(run_dir)
        self.path = self.dir / "metrics.jsonl"
        self.start = time.time()
        self.enabled = enabled
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_until is not None and self.path.is_file():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            kept = [row for row in rows if row.get("step", 0) <= keep_until]
            if kept:
                self.start -= kept[-1].get("time", 0.0)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        os.replace(tmp, self.path)

    def log(self, step: int, **metrics: Any) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time() - self.start, 3)}
        row.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()})
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def summary(self, **values: Any) -> dict:
        values = {"elapsed_s": round(time.time() - self.start, 1), **values}
        if self.enabled:
            write_json(self.dir / "summary.json", values)
        return values


def write_json(path: str | Path, value: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(tmp, path)


@contextmanager
def progress_bar(description: str, total: int):
    """A rich progress bar on stderr; yields `advance(n=1, **fields)` where fields are shown after the bar."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        disable=os.environ.get("RLHFKIT_NO_PROGRESS") == "1",
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: Any) -> None:
            info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance


# Decoders whose output layer is a plain projection of the last hidden state (no logit scaling or soft-capping), and
# whose attention honours packed position ids: the only ones the padding-free path below runs on.
PACKABLE = ("gpt2", "llama", "mistral", "qwen2", "qwen3")


def decoder_parts(model: torch.nn.Module, head: str = "lm_head") -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(backbone, output layer) of a plain or LoRA-wrapped decoder in PACKABLE, else None (wrapped for DDP/FSDP, an
    encoder, or an architecture that post-processes its logits): the caller then runs the whole model on a padded batch.
    `head` is "lm_head" for a causal LM, "score" for a reward model."""
    base = base_model(model)
    from transformers import PreTrainedModel

    if not isinstance(base, PreTrainedModel) or getattr(base.config, "model_type", None) not in PACKABLE:
        return None
    backbone = getattr(base, base.base_model_prefix, None)
    output = base.get_output_embeddings() if head == "lm_head" else getattr(base, head, None)
    return (backbone, output) if backbone is not None and output is not None else None


def attention_cost(backbone: torch.nn.Module) -> float:
    """Attention work per token per key, relative to the linear layers' work per token (what `pack_rows` weighs
    wider rows by): 4 * hidden FLOPs per layer (scores, weighted sum) against 2 per weight of every linear layer.
    Computed once per module."""
    cached = getattr(backbone, "_rlhfkit_attention_cost", None)
    if cached is None:
        from transformers.pytorch_utils import Conv1D

        config = backbone.config
        hidden = getattr(config, "hidden_size", None) or config.n_embd
        layers = getattr(config, "num_hidden_layers", None) or config.n_layer
        weights = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
        cached = 4 * hidden * layers / max(2 * weights, 1)
        backbone._rlhfkit_attention_cost = cached
    return cached


def packed_hidden(backbone: torch.nn.Module, sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, list[int]]:
    """Last hidden states of packed `sequences`, flattened to [rows * width, hidden], and where each sequence starts."""
    packed = pack_rows(sequences, pad_id, attention_cost=attention_cost(backbone))
    device = next(backbone.parameters()).device
    hidden = backbone(
        input_ids=packed["input_ids"].to(device), position_ids=packed["position_ids"].to(device), use_cache=False
    ).last_hidden_state
    width = packed["input_ids"].shape[1]
    return hidden.reshape(-1, hidden.shape[-1]), [r * width + s for r, s in zip(packed["row"], packed["start"])]


def response_logits(model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Padding-free forward (None where decoder_parts refuses the model): the float logits [N, V] at the N positions
    that predict a response token, the token each predicts, the sequence it belongs to and its index in the response.
    No padding goes through the matmuls, and the output layer runs only at those N positions."""
    parts = decoder_parts(model)
    if parts is None:
        return None
    backbone, lm_head = parts
    hidden, starts = packed_hidden(backbone, [p + r for p, r in zip(prompts, responses)], pad_id)
    where, labels, owner, slot = [], [], [], []
    for i, (p, r, start) in enumerate(zip(prompts, responses, starts)):
        first = max(
            len(p), 1
        )  # index in the sequence of the first predicted token (a sequence's first has no predictor)
        where.extend(range(start + first - 1, start + len(p) + len(r) - 1))
        labels.extend((p + r)[first:])
        owner.extend([i] * (len(p) + len(r) - first))
        slot.extend(range(first - len(p), len(r)))
    device = hidden.device
    logits = lm_head(hidden[torch.tensor(where, device=device)]).float()
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return logits, as_tensor(labels), as_tensor(owner), as_tensor(slot)


def response_logps(
    model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of the response tokens' log-probs, and their count (a sequence's first token has no
    prediction): padding-free where response_logits can, else one right-padded batch through the whole model."""
    packed = response_logits(model, prompts, responses, pad_id)
    if packed is None:
        batch = {k: v.to(next(model.parameters()).device) for k, v in pad_sequences(prompts, responses, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Shift: logits at t predict token t+1; only response tokens count.
        return sequence_logps(logits[:, :-1], batch["input_ids"][:, 1:], batch["response_mask"][:, 1:])
    logits, labels, owner, _ = packed
    token_logps = logits.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    sums = torch.zeros(len(prompts), dtype=token_logps.dtype, device=logits.device).index_add(0, owner, token_logps)
    return sums, torch.bincount(owner, minlength=len(prompts)).to(token_logps.dtype)
