"""Resumable training checkpoints: OUTPUT_DIR/checkpoints/step-N, written atomically (a temporary folder, then a
rename), holding the trainable weights, optimiser and scheduler state, every random-number generator and the
stage's own position (data batches consumed, best score so far, ...). A crash mid-write leaves only a hidden
temporary folder, never a half-written step-N; the newest `keep` checkpoints are kept.

`save` and `resume` are the protocol every stage uses, alone or among N processes: each process hands in its random
generators (and its own values, such as an online stage's sampler); the main process writes; on resume each process
takes back its own, or, when the process count changed, keeps the stage's position and reseeds."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_dir
from .console import console
from .errors import TrainingError

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights training changes: every parameter for full fine-tuning, the adapter alone for LoRA (the frozen
    base is reloaded from the model path on resume)."""
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    state = module.state_dict()
    if len(trainable) == sum(1 for _ in module.parameters()):
        return state
    return {name: tensor for name, tensor in state.items() if name in trainable}


def save_checkpoint(
    out: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict,
    state: dict,
    keep: int = 2,
    schedulers: dict | None = None,
    rng: Any = None,
) -> Path:
    """Write OUT/checkpoints/step-N atomically and keep the newest `keep`. `rng` defaults to this process's generators
    (a distributed run passes every rank's)."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        torch.save(
            {
                "step": step,
                "state": state,
                "modules": {k: trainable_state(m) for k, m in modules.items()},
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
                "rng": rng if rng is not None else rng_state(),
            },
            tmp / STATE_FILE,
        )
    for old in sorted(p for p in root.iterdir() if p.name.startswith("step-"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    root = out / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file())
    return done[-1] if done else None


def load_checkpoint(
    path: Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict,
    schedulers: dict | None = None,
    restore_rng: bool = True,
) -> tuple[int, dict]:
    """Restore modules, optimisers, schedulers (and, unless told not to, this process's generators); returns (step,
    the stage's state). A checkpoint that does not fit the model raises TrainingError naming it."""
    saved = torch.load(path / STATE_FILE, weights_only=False)
    for k, m in modules.items():
        weights = saved["modules"].get(k)
        try:
            if weights is None:
                raise KeyError(k)
            missing, unexpected = m.load_state_dict(weights, strict=False)
            if unexpected or len(missing) == len(m.state_dict()):
                raise RuntimeError(f"unexpected {unexpected[:3]}")
        except (KeyError, RuntimeError):
            raise TrainingError(
                f"{path}: the checkpoint's {k} does not match this config (model, lora or value_model changed?); "
                "resume with the run's own config.yaml or choose a new output_dir"
            ) from None
    for k, o in optimizers.items():
        o.load_state_dict(saved["optimizers"][k])
    for k, s in (schedulers or {}).items():
        if k in saved.get("schedulers", {}):
            s.load_state_dict(saved["schedulers"][k])
    if restore_rng:
        set_rng_state(saved["rng"])
    return saved["step"], {**saved["state"], "_rng": saved["rng"]}


def save(
    runtime,
    out: Path,
    step: int,
    modules: dict,
    optimizers: dict,
    state: dict,
    keep: int,
    schedulers: dict | None = None,
    per_rank: dict | None = None,
) -> Path | None:
    """Every process hands in its generators and `per_rank` values; the main process writes OUT/checkpoints/step-N
    (the modules unwrapped from DDP/FSDP) and all wait for it. Returns the checkpoint (None on other processes)."""
    ranks = runtime.gather_objects({"rng": rng_state(), **(per_rank or {})})
    path = None
    if runtime.is_main:
        unwrapped = {name: runtime.unwrap(module) for name, module in modules.items()}
        path = save_checkpoint(
            out,
            step,
            unwrapped,
            optimizers,
            {**state, "world": runtime.world},
            keep=keep,
            schedulers=schedulers,
            rng={"ranks": ranks},
        )
        console.print(f"checkpoint {path}", highlight=False)
    runtime.barrier()
    return path


@dataclass
class Resumed:
    step: int
    path: Path
    state: dict  # what the stage saved
    mine: dict  # this process's `per_rank` values; empty when the checkpoint had another process count


def resume(runtime, out: Path, modules: dict, optimizers: dict, schedulers: dict | None = None) -> Resumed | None:
    """Restore the newest checkpoint of OUT: modules, optimizers, schedulers and this process's generators. None (and
    a line saying so) when there is none."""
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        console.print(f"resume: no checkpoint in {out / 'checkpoints'}; starting from scratch")
        return None
    unwrapped = {name: runtime.unwrap(module) for name, module in modules.items()}
    step, state = load_checkpoint(checkpoint, unwrapped, optimizers, schedulers, restore_rng=False)
    ranks = state.pop("_rng").get("ranks", [])
    written_by = state.pop("world", len(ranks))
    mine: dict = {}
    if len(ranks) == runtime.world:
        mine = dict(ranks[runtime.rank])
        set_rng_state(mine.pop("rng"))
    else:
        console.print(
            f"resume: the checkpoint was written by {written_by} processes, this run has {runtime.world}; "
            "data position kept, random generators reseeded"
        )
    console.print(f"resuming from {checkpoint} (step {step})")
    return Resumed(step, checkpoint, state, mine)
