"""Where and how a training stage runs: one process, or N under `torchrun` / `accelerate launch` (DDP through
accelerate: gloo on CPU, NCCL on GPUs; FSDP2 with the `fsdp` key; DeepSpeed from an accelerate config file), on CPU
or CUDA, with optional bf16/fp16 autocast and gradient checkpointing.

`batch_size` is the global batch: every process draws the same batches from the same seeded stream and keeps its
slice (rank::world), so a run's data order does not depend on how many processes share it. A step's loss is the
sum over every process and accumulation micro-batch divided by the step's total weight (response tokens for SFT,
pairs for reward and DPO), so N processes and 1 process take the same gradient step up to float rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from . import checkpoints
from .console import console
from .errors import ConfigError
from .models.loading import base_model
from .train import check_finite, forever


@dataclass
class Runtime:
    accelerator: Any  # accelerate.Accelerator
    fsdp: bool = False  # the trained model is sharded with FSDP2 (fully_shard) over every process
    # under FSDP, the main process's unsharded copy of each sharded model on the meta device (no memory): the final
    # save loads the gathered full state dict into it
    skeletons: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def launcher_shards(self) -> bool:
        """An accelerate config chose FSDP or DeepSpeed: accelerate wraps the model, and ZeRO-3 / FSDP hold shards."""
        return self.accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def shard(self, batch: list) -> list:
        return batch[self.rank :: self.world]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes (a no-op alone)."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def mean_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Numeric statistics averaged over processes (each measured on an equal share); others kept as they are."""
        if self.world == 1:
            return stats
        keys = sorted(k for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        return {**stats, **{k: v / self.world for k, v in zip(keys, self.sum([float(stats[k]) for k in keys]))}}

    def gather_objects(self, value: Any) -> list[Any]:
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    def full_state(self, model: torch.nn.Module) -> dict | None:
        """Every process calls this. Under FSDP: the full state dict gathered from every shard, on the CPU of the
        main process (None on the others). Otherwise None: each process's model holds every weight."""
        if self.launcher_shards:
            # accelerate's own gather (FSDP full state dict; DeepSpeed ZeRO-3 needs
            # stage3_gather_16bit_weights_on_model_save): a collective, so every process calls it. Untested on CPU
            full = self.accelerator.get_state_dict(model)
            return full if self.is_main else None
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return full if self.is_main else None

    def plain_model(self, model: torch.nn.Module, state: dict | None = None) -> torch.nn.Module:
        """The main process's plain (unsharded, unwrapped) model to save, holding `state` when given (a full state
        dict from full_state). Under FSDP `state` is required: the sharded model holds only this process's shard."""
        if not (self.fsdp or self.launcher_shards):
            plain = self.unwrap(model)
            if state is not None:
                plain.load_state_dict(state)
            return plain
        if state is None:
            raise RuntimeError("plain_model of a sharded model needs the state gathered by full_state on every process")
        skeleton = self.skeletons[id(model)].to_empty(device="cpu")
        skeleton.load_state_dict(state, strict=True)
        # moving to the meta device gave tied weights (input and output embeddings) separate tensors: tie them again
        base = base_model(skeleton)
        if hasattr(base, "tie_weights"):
            base.tie_weights()
        return skeleton


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda': no CUDA GPU is visible to torch on this machine; use device=cpu (or auto)")
    return requested


def check_precision(precision: str, device: str) -> None:
    if precision == "fp16" and device != "cuda":
        raise ConfigError(
            "mixed_precision 'fp16' needs a CUDA GPU (CPU autocast has no fp16 loss scaling); use bf16 or no"
        )
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed_precision 'bf16': this GPU does not support bfloat16; use fp16 or no")


def start(config) -> Runtime:
    """Join the launcher's process group (if any) and check that the config fits it. Raises ConfigError before any
    model is loaded."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from .config import OnlineRLConfig
    from .models.loading import quantization

    # online RL (no device or precision keys) runs its processes on the CPU
    device = pick_device(getattr(config, "device", "cpu"))
    precision = getattr(config, "mixed_precision", "no")
    check_precision(precision, device)
    quantization(config.lora, device)  # QLoRA off CUDA is refused here, before any model is loaded
    # one Python process may run several stages (a pipeline, the tests) with different precisions; accelerate keeps
    # its settings in a process-wide singleton, so each stage starts it afresh (the process group itself stays)
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=precision)
    runtime = Runtime(accelerator)
    if getattr(config, "fsdp", False) and runtime.world > 1:
        if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
            raise ConfigError(
                f"fsdp=true and an accelerate config with {accelerator.distributed_type.value}: choose one (rlhfkit's "
                "fsdp=true under torchrun, or the accelerate config with fsdp=false)"
            )
        if config.lora and config.lora.load_in_4bit:
            raise ConfigError("fsdp=true with lora.load_in_4bit (QLoRA) is not supported; use one of them")
        runtime.fsdp = True
    if runtime.launcher_shards:
        kind = accelerator.distributed_type.value
        if isinstance(config, OnlineRLConfig):
            raise ConfigError(
                f"an accelerate config with {kind}: online RL (ppo, grpo, rloo) shards with its own fsdp=true under "
                "torchrun (or runs under DDP: torchrun or examples/accelerate/ddp.yaml)"
            )
        if config.checkpoint_every or config.resume:
            raise ConfigError(
                f"checkpoint_every/resume with an accelerate {kind} config: its sharded checkpoints are not written "
                "yet; use fsdp=true under torchrun (sharded checkpoints with torch.distributed.checkpoint) or DDP"
            )
    if config.batch_size % runtime.world:
        raise ConfigError(
            f"batch_size {config.batch_size} is the global batch and must divide evenly among the {runtime.world} "
            f"processes; use a multiple of {runtime.world}"
        )
    if runtime.world > 1 and runtime.is_main:
        console.print(
            f"distributed: {runtime.world} processes ({accelerator.distributed_type.value}, backend "
            f"{accelerator.state.backend}), {config.batch_size // runtime.world} of each batch's "
            f"{config.batch_size} per process"
        )
    if not runtime.is_main:
        console.quiet = True  # one process speaks
    return runtime


def prepare(runtime: Runtime, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config):
    """Gradient checkpointing if asked, then hand model and optimiser to accelerate together (DDP, or FSDP / DeepSpeed
    from the launcher's config, all need both at once). The scheduler stays ours: it steps once per optimizer step."""
    if config.gradient_checkpointing:
        base = base_model(model)
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ConfigError(
                f"gradient_checkpointing: {type(base).__name__} does not support it; set gradient_checkpointing=false"
            )
        # non-reentrant checkpointing also works when the inputs need no grad (LoRA on a frozen embedding)
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
    if runtime.fsdp:
        return shard(runtime, model, optimizer), optimizer
    if runtime.launcher_shards and runtime.is_main:
        runtime.skeletons[id(model)] = copy.deepcopy(model).to("meta")  # what the gathered weights are saved from
    prepared, optimizer = runtime.accelerator.prepare(model, optimizer)
    if runtime.launcher_shards and runtime.is_main:
        runtime.skeletons[id(prepared)] = runtime.skeletons.pop(id(model))
    return prepared, optimizer


def shard(runtime: Runtime, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> torch.nn.Module:
    """FSDP2 in place: each decoder layer (the architecture's `_no_split_modules`) and then the root become one
    all-gathered unit. Called directly rather than through accelerate's FSDP2 plugin, which is GPU-only: this runs
    the same code on CPU (gloo) and CUDA (NCCL), so the tests check what a GPU run does. `optimizer`: the one that
    trains `model` (None for a frozen model, such as the reference)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model.to(runtime.device)
    if runtime.is_main:
        runtime.skeletons[id(model)] = copy.deepcopy(model).to("meta")
    names = {id(p): name for name, p in model.named_parameters()}
    mesh = init_device_mesh(runtime.device.type, (runtime.world,))
    # the decoder layers of every transformers model inside (a value model's backbone, a PEFT-wrapped policy)
    layers = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
    for module in list(model.modules())[1:]:
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # fully_shard replaces each parameter with a sharded one: the optimiser (still without state) takes the new ones
    params = dict(model.named_parameters())
    for group in optimizer.param_groups if optimizer is not None else []:
        group["params"] = [params[names[id(p)]] if id(p) in names else p for p in group["params"]]
    return model


@contextmanager
def gathered(model: torch.nn.Module):
    """Every FSDP2 unit of `model` all-gathered once and kept whole until the block ends (a no-op for a model that
    is not sharded). Sampling needs it: each process generates a different number of tokens (rows stop at EOS), so
    per-forward all-gathers would leave the processes waiting on each other's collectives; whole weights need none.
    Costs the full weights' memory for the block, as a sampling engine holding its own copy would."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False)
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)


def clip_grad_norm(runtime: Runtime, params: list[torch.nn.Parameter], max_norm: float) -> float:
    """clip_grad_norm_ for plain, DDP or FSDP2 (sharded gradients: the whole gradient's norm) parameters; returns the
    norm before clipping."""
    if runtime.fsdp:
        return float(clip_sharded_grad_norm(params, max_norm))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


class BatchStream:
    """Seeded, shuffled global batches epoch after epoch, counting how many were taken (the data position a
    checkpoint records)."""

    def __init__(self, items: list, batch_size: int, seed: int):
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.taken = 0
        self._batches: Iterator[list] = forever(items, batch_size, seed)

    def __next__(self) -> list:
        self.taken += 1
        return next(self._batches)

    def __iter__(self):
        return self

    def skip_to(self, position: int) -> None:
        while self.taken < position:
            next(self)


def accumulate(
    runtime: Runtime,
    model: torch.nn.Module,
    micro_batches: list[list],
    weigh: Callable[[list], float],
    loss_sum: Callable[[list], tuple[torch.Tensor, dict[str, float]]],
    step: int,
) -> dict[str, float]:
    """Forward and backward over this process's micro-batches of one optimizer step. `weigh(batch)` is the batch's
    share of the step (tokens or pairs); `loss_sum(batch)` returns the summed loss and summed statistics. Returns
    the step's loss and statistics as means over every process and micro-batch."""
    accelerator = runtime.accelerator
    weights = [float(weigh(batch)) for batch in micro_batches]
    (total,) = runtime.sum([sum(weights)])
    # DDP (and FSDP2's reduce-scatter) averages gradients over processes, so each process scales its sum by
    # world / total
    scale = runtime.world / max(total, 1e-8)
    sums: dict[str, float] = {}
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # FSDP2 reduce-scatters every micro-batch's gradients (no no_sync): the same sum, more messages
        sync = nullcontext() if last or runtime.world == 1 or runtime.fsdp else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                loss, stats = loss_sum(batch)
            check_finite(loss, step)
            accelerator.backward(loss * scale)
        for key, value in {"loss": loss.item(), **stats}.items():
            sums[key] = sums.get(key, 0.0) + value
    keys = sorted(sums)
    totals = runtime.sum([sums[k] for k in keys])
    return {k: v / max(total, 1e-8) for k, v in zip(keys, totals)}


def optimizer_step(
    runtime: Runtime, model: torch.nn.Module, optimizer, scheduler, max_grad_norm: float
) -> float | None:
    """Clip, step the optimizer and the schedule, free the gradients; returns the gradient norm before clipping
    (None under DeepSpeed, which clips inside its engine and reports no norm)."""
    if runtime.fsdp:
        grad_norm = clip_sharded_grad_norm(model.parameters(), max_grad_norm)
    else:
        grad_norm = runtime.accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm) if grad_norm is not None else None


def clip_sharded_grad_norm(params, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ over FSDP2's sharded gradients: the norm of the whole gradient (its shards' norms reduced over
    processes), then every shard scaled by the same factor."""
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


# ---------------------------------------------------------------- checkpoints of the offline stages


def save(
    runtime: Runtime,
    out,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    stream: BatchStream,
    state: dict,
    keep: int,
) -> None:
    """An offline stage's checkpoint (checkpoints.save): weights, optimiser, schedule, and the data position."""
    checkpoints.save(
        runtime,
        out,
        step,
        {"model": model},
        {"adamw": optimizer},
        {**state, "batches_taken": stream.taken},
        keep,
        schedulers={"schedule": scheduler},
    )


def resume(
    runtime: Runtime, config, out, model: torch.nn.Module, optimizer, scheduler, stream: BatchStream
) -> tuple[int, dict]:
    """With `resume`, restore the newest checkpoint (checkpoints.resume) and move the batch stream to its position.
    Returns (step, the stage's state); (0, {}) when starting afresh."""
    if not config.resume:
        return 0, {}
    resumed = checkpoints.resume(runtime, out, {"model": model}, {"adamw": optimizer}, {"schedule": scheduler})
    if resumed is None:
        return 0, {}
    stream.skip_to(resumed.state.pop("batches_taken"))
    return resumed.step, resumed.state


def should_save(config, step: int, steps: int) -> bool:
    return bool(config.checkpoint_every) and step % config.checkpoint_every == 0 and step < steps


def save_trained(runtime, model, tokenizer, out_dir, config, stage: str, summary: dict, state: dict | None = None):
    """Every process calls this: the trained model saved as one plain Hugging Face folder with its model card.
    Under FSDP the shards are gathered from every process first (`full_state`), so the main process saves the whole
    model, never its own shard; `state` is a full state dict to save instead (reward training's best one)."""
    from .cards import model_card
    from .models.loading import save_model

    if state is None:
        state = runtime.full_state(model)
    if runtime.is_main:
        save_model(
            runtime.plain_model(model, state),
            tokenizer,
            out_dir,
            merge_lora=config.lora.merge if config.lora else True,
            card=model_card(stage, config, summary),
        )
