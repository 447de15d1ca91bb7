"""Parts shared by the online RL stages (ppo, grpo, rloo, bon): policy and reference, rewards, rollouts,
per-token log-probs, monitoring with rolling windows, guards, and atomic checkpoints that resume."""

from __future__ import annotations

import json
import random
import statistics
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from ..config import OnlineRLConfig, RewardSpec
from ..data.records import load_records
from ..data.tokenize import Encoder, pad_left
from ..errors import ConfigError, TrainingError
from ..evaluate.diversity import distinct_n
from ..models.loading import apply_lora, load_causal_lm, load_reward_model, load_tokenizer, resolve_model_path
from ..rollout import TRUNCATION_WARNING, Rollout, decode_responses, generate, token_logps, warn_if_truncated
from ..scoring import call_scorer, load_scorer
from ..train import console

# ---------------------------------------------------------------- rewards


class RewardFunction:
    """Weighted sum of reward sources: reward-model directories (a chosen head) and `module:function` callables."""

    def __init__(self, specs: list[RewardSpec]):
        from .reward import RewardEncoder

        self.sources = []
        for i, spec in enumerate(specs):
            if spec.model:
                path = resolve_model_path(spec.model)
                tokenizer = load_tokenizer(path)
                model = load_reward_model(path, tokenizer).eval()
                if spec.head >= model.config.num_labels:
                    raise ConfigError(
                        f"rewards[{i}].head={spec.head}: the reward model {path} has {model.config.num_labels} head(s)"
                    )
                encoder = RewardEncoder(tokenizer, max_length=1024, max_prompt_length=512)
                self.sources.append((f"rm{i}", spec, (model, tokenizer, encoder)))
            else:
                self.sources.append((f"fn{i}", spec, load_scorer(spec.function, option=f"rewards[{i}].function")))

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        from .reward import score_sequences

        total = torch.zeros(len(responses))
        parts = {}
        for name, spec, source in self.sources:
            if callable(source):
                scores = torch.tensor(call_scorer(source, prompts, responses, option=name))
            else:
                model, tokenizer, encoder = source
                seqs = [encoder.encode_response(p, r) for p, r in zip(prompts, responses)]
                scores = torch.cat(
                    [
                        score_sequences(model, seqs[i : i + 64], tokenizer.pad_token_id, spec.head).float()
                        for i in range(0, len(seqs), 64)
                    ]
                )
            parts[f"reward_{name}"] = scores.mean().item()
            total += spec.weight * scores
        return total, parts


# ---------------------------------------------------------------- policy, reference, prompts


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: object
    reference: torch.nn.Module | None  # None: the adapter-disabled policy (LoRA)
    path: Path

    @torch.no_grad()
    def reference_logps(self, input_ids, attention_mask, prompt_len: int, temperature: float) -> torch.Tensor:
        if self.reference is None:
            with self.model.disable_adapter():
                return token_logps(self.model, input_ids, attention_mask, prompt_len, temperature)[0]
        return token_logps(self.reference, input_ids, attention_mask, prompt_len, temperature)[0]


def load_policy(config: OnlineRLConfig) -> Policy:
    path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(path, padding_side="left")
    model = load_causal_lm(path)
    reference = None
    if config.lora:
        model = apply_lora(model, config.lora)
        if config.ref_model:
            reference = load_causal_lm(resolve_model_path(config.ref_model))
    else:
        reference = load_causal_lm(resolve_model_path(config.ref_model) if config.ref_model else path)
    if reference is not None:
        reference.eval().requires_grad_(False)
    # Dropout off everywhere: log-probs must agree between rollout and update.
    model.eval()
    return Policy(model=model, tokenizer=tokenizer, reference=reference, path=path)


def setup(config: OnlineRLConfig):
    """Seed, then load everything an online stage needs: (reward function, gold judge or None, policy, prompt
    stream)."""
    from ..train import setup_torch
    from .pairs import resolve_prompts

    setup_torch(config.seed, config.threads)
    reward_fn = RewardFunction(config.rewards)
    gold = load_scorer(config.gold) if config.gold else None
    policy = load_policy(config)
    prompts = PromptStream(resolve_prompts(config.prompts), policy.tokenizer, config.max_prompt_length, config.seed)
    return reward_fn, gold, policy, prompts


class PromptStream:
    """Endless, seeded, epoch-shuffled prompts; `position` makes it resumable."""

    def __init__(self, prompts_path: Path, tokenizer, max_prompt_length: int, seed: int):
        records = load_records(prompts_path, "prompt")
        encoder = Encoder(tokenizer, max_length=max_prompt_length + 1, max_prompt_length=max_prompt_length)
        self.ids = [encoder.prompt_ids(r.prompt)[0] for r in records]
        self.texts = [tokenizer.decode(i) for i in self.ids]
        self.seed = seed
        self.position = 0

    def take(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            epoch, offset = divmod(self.position, len(self.ids))
            order = list(range(len(self.ids)))
            random.Random(self.seed + epoch).shuffle(order)
            out.append(order[offset])
            self.position += 1
        return out


@dataclass
class Batch:
    """One iteration's sampled data, everything the update needs."""

    rollout: Rollout
    prompt_texts: list[str]
    response_texts: list[str]
    scores: torch.Tensor  # combined reward per sequence (after missing-EOS penalty)
    logps: torch.Tensor  # [B, R] behaviour log-probs
    ref_logps: torch.Tensor  # [B, R]
    mask: torch.Tensor  # [B, R] float
    stats: dict


def sample_batch(
    policy: Policy,
    prompts: PromptStream,
    indices: list[int],
    reward_fn: RewardFunction,
    gold,
    config: OnlineRLConfig,
    generator: torch.Generator,
) -> Batch:
    tok = policy.tokenizer
    batch = pad_left([prompts.ids[i] for i in indices], tok.pad_token_id)
    rollout = generate(
        policy.model,
        batch["input_ids"],
        batch["attention_mask"],
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        generator=generator,
    )
    input_ids, attention_mask = rollout.full()
    prompt_len = rollout.prompt_ids.shape[1]
    mask = rollout.response_mask.float()
    # Behaviour log-probs come from sampling itself (same tempered distribution the update uses): no second forward
    # pass.
    logps = rollout.logps
    ref_logps = policy.reference_logps(input_ids, attention_mask, prompt_len, config.temperature)
    prompt_texts = [prompts.texts[i] for i in indices]
    responses = decode_responses(tok, rollout)
    scores, parts = reward_fn(prompt_texts, responses)
    if config.missing_eos_penalty is not None:
        scores = scores - config.missing_eos_penalty * rollout.truncated.float()
    lengths = mask.sum(1)
    seq_kl = ((logps - ref_logps) * mask).sum(1)
    stats = {
        "reward": scores.mean().item(),
        **parts,
        "kl": seq_kl.mean().item(),
        "response_length": lengths.mean().item(),
        "response_words": statistics.mean(len(r.split()) for r in responses),
        "distinct_2": distinct_n(responses, 2),
        "truncated_share": rollout.truncated_share,
    }
    if gold is not None:
        stats["gold"] = statistics.mean(call_scorer(gold, prompt_texts, responses))
    return Batch(rollout, prompt_texts, responses, scores, logps.detach(), ref_logps.detach(), mask, stats)


# ---------------------------------------------------------------- monitoring and guards


class Monitor:
    """metrics.jsonl rows with rolling-window means (`*_avg`) of the headline metrics."""

    HEADLINE = ("reward", "gold", "kl", "entropy", "response_length", "distinct_2")

    def __init__(self, path: Path, window: int, resume_step: int | None, max_new_tokens: int = 0):
        """A fresh log, or (resuming) the rows up to the checkpoint's step; rows logged after it are dropped."""
        self.path = path
        self.max_new_tokens = max_new_tokens
        self.warned_at: int | None = None
        self.windows: dict[str, deque] = {k: deque(maxlen=window) for k in self.HEADLINE}
        kept = []
        if resume_step is not None and path.is_file():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step
            ]
        path.write_text("".join(line + "\n" for line in kept))
        for line in kept[-window:]:
            row = json.loads(line)
            for k in self.HEADLINE:
                if k in row:
                    self.windows[k].append(row[k])

    def log(self, step: int, row: dict) -> dict:
        share = row.get("truncated_share", 0.0)
        if share > TRUNCATION_WARNING and (self.warned_at is None or step - self.warned_at >= 10):
            self.warned_at = step  # loud, but at most once every 10 steps
            warn_if_truncated(share, self.max_new_tokens, f" at step {step}")
        for k in self.HEADLINE:
            if k in row and row[k] is not None:
                self.windows[k].append(row[k])
        full = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}}
        full.update({f"{k}_avg": round(sum(w) / len(w), 6) for k, w in self.windows.items() if w})
        with self.path.open("a") as handle:
            handle.write(json.dumps(full) + "\n")
        return full


def guard(step: int, loss: torch.Tensor, kl: float, config: OnlineRLConfig, last_checkpoint: Path | None) -> None:
    keep = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else "; no checkpoint was written yet"
    if not torch.isfinite(loss):
        raise TrainingError(f"step {step}: the loss is {loss.item()} (NaN/inf guard stopped the run){keep}")
    if config.kl_ceiling is not None and kl > config.kl_ceiling:
        raise TrainingError(
            f"step {step}: KL to the reference {kl:.2f} exceeds kl_ceiling={config.kl_ceiling} (KL guard stopped "
            f"the run){keep}"
        )


# ---------------------------------------------------------------- checkpoints


def resume_state(
    config: OnlineRLConfig,
    out: Path,
    modules: dict,
    optimizer,
    generator: torch.Generator,
    prompts: PromptStream,
    rank: int = 0,
) -> tuple[int, Path | None, dict]:
    """With `resume`, restore modules, optimizer, sampler RNG (this process's) and prompt position from the newest
    checkpoint."""
    if not config.resume:
        return 0, None, {}
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        console.print(f"resume: no checkpoint in {out / 'checkpoints'}; starting from scratch")
        return 0, None, {}
    step, state = load_checkpoint(checkpoint, modules, {"adamw": optimizer})
    prompts.position = state["prompt_position"]
    generators = state["generator"] if isinstance(state["generator"], list) else [state["generator"]]
    if rank < len(generators):
        generator.set_state(generators[rank])
    console.print(f"resuming from {checkpoint} (step {step})")
    return step, checkpoint, state


def checkpoint_now(
    out: Path,
    step: int,
    modules: dict,
    optimizer,
    generator: torch.Generator,
    prompts: PromptStream,
    runtime=None,
    **extra,
) -> Path | None:
    """Main process writes; `generator` holds every process's sampler state (gathered) so each resumes its own
    stream."""
    generators = runtime.gather_objects(generator.get_state()) if runtime is not None else [generator.get_state()]
    path = None
    if runtime is None or runtime.is_main:
        path = save_checkpoint(
            out,
            step,
            modules,
            {"adamw": optimizer},
            {"prompt_position": prompts.position, "generator": generators, **extra},
        )
    if runtime is not None:
        runtime.barrier()
    return path


def finish(name: str, config: OnlineRLConfig, policy: Policy, out: Path, row: dict, runtime=None) -> dict:
    """Save the final policy as a plain HF directory and write summary.json (the main process, when distributed)."""
    from ..models.loading import save_model
    from ..train import write_json

    if runtime is not None and not runtime.is_main:
        runtime.barrier()
        return {"stage": name, "final": row}
    save_model(
        policy.model, load_tokenizer(policy.path), out / "model", merge_lora=config.lora.merge if config.lora else True
    )
    summary = {
        "stage": name,
        "model": str(policy.path),
        "steps": config.steps,
        "processes": runtime.world if runtime else 1,
        "final": row,
        "model_dir": str(out / "model"),
    }
    write_json(out / "summary.json", summary)
    console.print(
        f"{name}: {config.steps} steps; last-window reward {row.get('reward_avg', float('nan')):.3f}, "
        f"gold {row.get('gold_avg', float('nan')):.3f}, KL {row.get('kl_avg', float('nan')):.3f}; model saved to "
        f"{out / 'model'}"
    )
    if runtime is not None:
        runtime.barrier()
    return summary


def minibatches(n: int, size: int, epochs: int):
    """Row indices for `epochs` shuffled passes over a batch of n rows, `size` at a time."""
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, size):
            yield order[i : i + size]


def constant_schedule(optimizer, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
