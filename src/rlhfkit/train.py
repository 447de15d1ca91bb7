"""Small parts every training stage shares: seeding, threads, optimizer and schedule, the run log, progress bars."""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import TrainingError

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
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
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
        raise TrainingError(f"step {step}: the loss is {loss.item()}; lower lr or check the data (the last saved model is kept)")


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
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=console, transient=False, disable=os.environ.get("RLHFKIT_NO_PROGRESS") == "1",
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: Any) -> None:
            info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance
