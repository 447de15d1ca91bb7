"""Resumable training checkpoints: OUTPUT_DIR/checkpoints/step-N, written atomically (a temporary folder, then a
rename), holding the trainable weights, optimiser and scheduler state, every random-number generator and the
stage's own position (data batches consumed, best score so far, ...). A crash mid-write leaves only a hidden
temporary folder, never a half-written step-N; the newest `keep` checkpoints are kept.

`save` and `resume` are the protocol every stage uses, alone or among N processes: each process hands in its random
generators (and its own values, such as an online stage's sampler); the main process writes; on resume each process
takes back its own, or, when the process count changed, keeps the stage's position and reseeds. Under FSDP
(runtime.fsdp) the weights and optimiser state are sharded: every process writes its shards into step-N/sharded with
torch.distributed.checkpoint (inside the same temporary folder, before trainer_state.pt, so a kill leaves no step-N),
and on resume reads them back, resharded if the process count changed."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_dir
from .console import console
from .errors import TrainingError

STATE_FILE = "trainer_state.pt"
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint files of a sharded (FSDP) model and optimiser


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
    write_first: Callable[[Path], None] | None = None,
) -> Path:
    """Write OUT/checkpoints/step-N atomically and keep the newest `keep`. `rng` defaults to this process's generators
    (a distributed run passes every rank's). `write_first(tmp)` writes more into the temporary folder first (the
    sharded weights)."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        if write_first is not None:
            write_first(tmp)
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
    (the modules unwrapped from DDP) and all wait for it. Under FSDP every process writes its shards of the modules
    and optimisers there too. Returns the checkpoint (None on other processes)."""
    ranks = runtime.gather_objects({"rng": rng_state(), **(per_rank or {})})
    fsdp = getattr(runtime, "fsdp", False)

    def write_shards(tmp: Path | None) -> None:
        # every process learns the main process's temporary folder, then all write their shards into it
        folder = Path(runtime.gather_objects(str(tmp) if tmp is not None else None)[0])
        import torch.distributed.checkpoint as dcp

        dcp.save(sharded_state(modules, optimizers), checkpoint_id=folder / SHARDED_DIR)

    path = None
    if runtime.is_main:
        unwrapped = {name: runtime.unwrap(module) for name, module in modules.items()}
        path = save_checkpoint(
            out,
            step,
            {} if fsdp else unwrapped,
            {} if fsdp else optimizers,
            {**state, "world": runtime.world},
            keep=keep,
            schedulers=schedulers,
            rng={"ranks": ranks},
            write_first=write_shards if fsdp else None,
        )
        console.print(f"checkpoint {path}", highlight=False)
    elif fsdp:
        write_shards(None)
    runtime.barrier()
    return path


def sharded_state(modules: dict, optimizers: dict) -> dict:
    """The sharded state dicts (DTensors) of one FSDP model and its optimisers, as torch.distributed.checkpoint
    saves and loads them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    if len(modules) != 1:
        raise NotImplementedError("sharded checkpoints hold one model and its optimisers")
    (model,) = modules.values()
    return {
        "modules": {name: get_model_state_dict(m) for name, m in modules.items()},
        "optimizers": {name: get_optimizer_state_dict(model, o) for name, o in optimizers.items()},
    }


def load_shards(path: Path, modules: dict, optimizers: dict) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = sharded_state(modules, optimizers)
    dcp.load(state, checkpoint_id=path / SHARDED_DIR)
    (model,) = modules.values()
    for name, m in modules.items():
        set_model_state_dict(m, state["modules"][name])
    for name, o in optimizers.items():
        set_optimizer_state_dict(model, o, state["optimizers"][name])


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
    fsdp = getattr(runtime, "fsdp", False)
    if (checkpoint / SHARDED_DIR).is_dir() != fsdp:
        raise TrainingError(
            f"{checkpoint} was written {'without' if fsdp else 'with'} fsdp=true; resume with the run's own fsdp "
            "setting (its config.yaml) or choose a new output_dir"
        )
    if fsdp:
        step, state = load_checkpoint(checkpoint, {}, {}, schedulers, restore_rng=False)
        load_shards(checkpoint, modules, optimizers)
    else:
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
