"""Small parts every training stage shares: seeding, threads, optimizer and schedule, the run log, progress bars,
and the padding-free forward that gives response log-probs."""

from __future__ import annotations

import json
import math
import random
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape

from .atomic import atomic_file, atomic_write, write_json
from .console import console
from .errors import TrainingError


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


def adamw(param_groups: list, lr: float, weight_decay: float = 0.0, eps: float = 1e-8) -> torch.optim.AdamW:
    """The one optimizer of every stage: AdamW, fused where the parameters allow. `param_groups` is a list of
    parameters or of {params, weight_decay} groups."""
    params = [p for group in param_groups for p in (group["params"] if isinstance(group, dict) else [group])]
    # the fused kernel does AdamW's ~10 elementwise passes in one (~3x faster on CPU); same update
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=weight_decay, fused=fused)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then linear decay to 10% of the peak at `steps`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant_schedule(optimizer: torch.optim.Optimizer, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then the peak learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, warmup_ratio: float, steps: int):
    """The offline stages' optimizer and schedule: AdamW (no decay on biases and norms) with a linear schedule."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = adamw(groups, lr)
    return optimizer, linear_schedule(optimizer, int(steps * warmup_ratio), steps)


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


class Alarms:
    """Loud WARNING lines on the console, each kind at most once every `every` steps: a run that keeps going wrong
    the same way says so again every `every` steps, not at every step. `enabled=False` (a process other than the
    main one) prints nothing."""

    def __init__(self, every: int = 10, enabled: bool = True):
        self.every, self.enabled = every, enabled
        self.warned_at: dict[str, int] = {}

    def due(self, step: int, kind: str) -> bool:
        """True, and the step is recorded, when `kind` was not warned of in the last `every` steps."""
        last = self.warned_at.get(kind)
        if not self.enabled or (last is not None and step - last < self.every):
            return False
        self.warned_at[kind] = step
        return True

    def warn(self, step: int, kind: str, message: str) -> None:
        if self.due(step, kind):
            # one line, however long: a log stays greppable
            console.print(f"[bold red]WARNING at step {step}:[/] {escape(message)}", highlight=False, soft_wrap=True)


def gradient_problem(grad_norm: float | None) -> str | None:
    """What is wrong with a step's gradient norm (before clipping), or None: 0 (no parameter got a gradient, so the
    step learned nothing) or not finite (the update is corrupt). None: the norm is unknown (DeepSpeed clips inside
    its engine)."""
    if grad_norm is None:
        return None
    if not math.isfinite(grad_norm):
        return (
            f"the gradient norm is {grad_norm} (before clipping), so the update is corrupt; lower lr, use bf16 "
            "rather than fp16, or look for inf/NaN in the rewards or the data"
        )
    if grad_norm == 0:
        return "the gradient norm is 0, so the update changed nothing"
    return None


# what to check when an offline stage's gradient is 0: nothing that reaches the loss is trainable, or the loss is flat
OFFLINE_ZERO_GRADIENT = (
    "check that the trainable weights reach the loss (lora target_modules), and for loss_type hinge that not every "
    "pair is already past the margin"
)


def check_gradient(alarms: Alarms, step: int, grad_norm: float | None, hint: str = OFFLINE_ZERO_GRADIENT) -> None:
    """WARN (rate-limited) when a step's gradient norm is 0 or not finite (gradient_problem), with `hint` for a 0."""
    problem = gradient_problem(grad_norm)
    if problem is not None:
        if grad_norm == 0:
            alarms.warn(step, "zero_gradient", f"{problem}; {hint}")
        else:  # its own kind: a corrupt update is news even right after a 0
            alarms.warn(step, "corrupt_gradient", problem)


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"step {step}: the loss is {loss.item()}; lower lr or check the data (the last saved model is kept)"
        )


class RunLog:
    """metrics.jsonl (one row per logged step, appended and flushed) and summary.json of a run folder: the one metrics
    writer of every stage. A resumed run keeps the rows up to its checkpoint's step (`keep_until`); only the main
    process of a distributed run writes (`enabled`). With `rolling` metric names, each row also carries NAME_avg, the
    mean of the last `window` values logged (refilled from the kept rows on resume). With a stage `config` whose
    `report_to` names trackers, every row goes to them too (rlhfkit.trackers); `summary` or `close` closes them."""

    def __init__(
        self,
        run_dir: str | Path,
        keep_until: int | None = None,
        enabled: bool = True,
        rolling: tuple[str, ...] = (),
        window: int = 1,
        config=None,
    ):
        self.dir = Path(run_dir)
        self.path = self.dir / "metrics.jsonl"
        self.start = time.time()
        self.enabled = enabled
        self.windows: dict[str, deque] = {name: deque(maxlen=window) for name in rolling}
        self.trackers = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if getattr(config, "report_to", None):
            from .trackers import Trackers

            name = config.run_name or self.dir.resolve().name
            self.trackers = Trackers(config.report_to, self.dir, name, config.model_dump(mode="json"), config.tags)
        kept = []
        if keep_until is not None and self.path.is_file():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            kept = [row for row in rows if row.get("step", 0) <= keep_until]
            if kept:
                self.start -= kept[-1].get("time", 0.0)
        atomic_write(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        for row in kept[-window:]:
            self.add_to_windows(row)

    def add_to_windows(self, row: dict) -> None:
        for name, values in self.windows.items():
            if row.get(name) is not None:
                values.append(row[name])

    def log(self, step: int, **metrics: Any) -> dict:
        """Write one row (step, seconds since the start, the metrics, their rolling means) and return it."""
        self.add_to_windows(metrics)
        row = {"step": step, "time": round(time.time() - self.start, 3)}
        row.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()})
        row.update({f"{name}_avg": round(sum(w) / len(w), 6) for name, w in self.windows.items() if w})
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            if self.trackers is not None:
                self.trackers.log(step, {k: v for k, v in row.items() if k != "step"})
        return row

    def summary(self, **values: Any) -> dict:
        values = {"elapsed_s": round(time.time() - self.start, 1), **values}
        if self.enabled:
            write_json(self.dir / "summary.json", values)
        self.close()
        return values

    def close(self) -> None:
        """Close the trackers (flush and finish their runs); the JSONL file needs nothing."""
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


def file_stamps(path: Path) -> list:
    """(name, size, mtime) of a file or of every file in a folder: changes whenever the model or data is rewritten."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def cached_reference(path: Path, key: str, compute) -> torch.Tensor:
    """Reference log-probs saved under `path` with their `key` (what they were computed from): reused when the key
    matches, else `compute()`d and written atomically (dpo, kto)."""
    if path.is_file():
        saved = torch.load(path)
        if saved.get("key") == key:
            console.print(f"reusing cached reference log-probs from {path}")
            return saved["logps"]
    logps = compute()
    with atomic_file(path, "wb") as handle:
        torch.save({"key": key, "logps": logps}, handle)
    return logps
