"""Parts shared by the online RL stages (ppo, grpo, rloo, reinforce-pp, online-dpo, bon, bon-sweep): policy and
reference, rewards, rollouts, per-token log-probs, monitoring with rolling windows, guards, and atomic checkpoints
that resume."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoints
from .config import OnlineRLConfig, RewardSpec
from .console import console
from .data.records import load_records
from .data.tokenize import Encoder, pad_left
from .errors import TrainingError
from .evaluate.diversity import distinct_n, stock_phrase
from .forward import CHUNK_SIZE, token_logps
from .models.loading import apply_lora, load_causal_lm, load_tokenizer
from .resolve import resolve_model_path
from .rollout import TRUNCATION_WARNING, Rollout, decode_responses, generate, warn_if_truncated
from .scoring import RewardModelScorer, call_scorer, load_scorer
from .train import RunLog

# ---------------------------------------------------------------- rewards


class RewardFunction:
    """Weighted sum of reward sources: reward-model directories (a chosen head) and `module:function` callables."""

    def __init__(self, specs: list[RewardSpec]):
        self.sources = []
        for i, spec in enumerate(specs):
            if spec.model:
                scorer = RewardModelScorer(spec.model)
                scorer.check_head(spec.head, f"rewards[{i}].head")
                self.sources.append((f"rm{i}", spec, scorer))
            else:
                self.sources.append((f"fn{i}", spec, load_scorer(spec.function, option=f"rewards[{i}].function")))

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        total = torch.zeros(len(responses))
        parts = {}
        for name, spec, source in self.sources:
            if isinstance(source, RewardModelScorer):
                scores = torch.tensor(source.score(prompts, responses, spec.head))
            else:
                scores = torch.tensor(call_scorer(source, prompts, responses, option=name))
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
    logits: str = "auto"  # forward.token_logps's output-layer path (config keys logits, logits_chunk_size)
    chunk_size: int = CHUNK_SIZE

    def logps(self, model, input_ids, attention_mask, prompt_len: int, temperature: float, with_entropy=False):
        """forward.token_logps on `model` (the policy, or the policy as DDP wraps it) with the config's logits path."""
        return token_logps(
            model, input_ids, attention_mask, prompt_len, temperature, with_entropy, self.logits, self.chunk_size
        )

    @torch.no_grad()
    def reference_logps(self, input_ids, attention_mask, prompt_len: int, temperature: float) -> torch.Tensor:
        if self.reference is None:
            with self.model.disable_adapter():
                return self.logps(self.model, input_ids, attention_mask, prompt_len, temperature)[0]
        return self.logps(self.reference, input_ids, attention_mask, prompt_len, temperature)[0]


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
    return Policy(model, tokenizer, reference, path, config.logits, config.logits_chunk_size)


def setup(config: OnlineRLConfig):
    """Seed, then load everything an online stage needs: (reward function, gold judge or None, policy, prompt
    stream)."""
    from .resolve import resolve_prompts
    from .train import setup_torch

    setup_torch(config.seed, config.threads)
    reward_fn = RewardFunction(config.rewards)
    gold = load_scorer(config.gold) if config.gold else None
    policy = load_policy(config)
    prompts = PromptStream(
        resolve_prompts(config.prompts), policy.tokenizer, config.max_prompt_length, config.seed, config.columns
    )
    return reward_fn, gold, policy, prompts


class PromptStream:
    """Endless, seeded, epoch-shuffled prompts; `position` makes it resumable."""

    def __init__(self, prompts_path: Path, tokenizer, max_prompt_length: int, seed: int, columns=None):
        records = load_records(prompts_path, "prompt", columns)
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
    gold_scores: torch.Tensor | None = None  # [B] the gold judge's score of each response (when gold is set)

    def select(self, rows: list[int]) -> Batch:
        """The batch's rows `rows`, in that order (stats kept: they describe the batch as sampled)."""
        index = torch.tensor(rows, dtype=torch.long)
        r = self.rollout
        rollout = Rollout(*(t[index] for t in (r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask,
                                                r.logps, r.truncated)))  # fmt: skip
        return Batch(
            rollout,
            [self.prompt_texts[i] for i in rows],
            [self.response_texts[i] for i in rows],
            self.scores[index],
            self.logps[index],
            self.ref_logps[index],
            self.mask[index],
            self.stats,
            None if self.gold_scores is None else self.gold_scores[index],
        )


def _pad_to(tensor: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    extra = width - tensor.shape[1]
    if extra == 0:
        return tensor
    fill = torch.full((tensor.shape[0], extra), value, dtype=tensor.dtype)
    return torch.cat([fill, tensor] if left else [tensor, fill], 1)


def concat_batches(batches: list[Batch], pad_id: int) -> Batch:
    """One batch of the rows of several (prompts re-padded on the left, responses on the right); the stats are
    the first batch's."""
    prompt_width = max(b.rollout.prompt_ids.shape[1] for b in batches)
    width = max(b.mask.shape[1] for b in batches)

    def cat(get, value, left=False, pad_width=width) -> torch.Tensor:
        return torch.cat([_pad_to(get(b), pad_width, value, left) for b in batches])

    rollout = Rollout(
        prompt_ids=cat(lambda b: b.rollout.prompt_ids, pad_id, left=True, pad_width=prompt_width),
        prompt_mask=cat(lambda b: b.rollout.prompt_mask, 0, left=True, pad_width=prompt_width),
        response_ids=cat(lambda b: b.rollout.response_ids, pad_id),
        response_mask=cat(lambda b: b.rollout.response_mask, 0),
        logps=cat(lambda b: b.rollout.logps, 0.0),
        truncated=torch.cat([b.rollout.truncated for b in batches]),
    )
    return Batch(
        rollout,
        [t for b in batches for t in b.prompt_texts],
        [t for b in batches for t in b.response_texts],
        torch.cat([b.scores for b in batches]),
        cat(lambda b: b.logps, 0.0),
        cat(lambda b: b.ref_logps, 0.0),
        cat(lambda b: b.mask, 0.0),
        batches[0].stats,
        None if batches[0].gold_scores is None else torch.cat([b.gold_scores for b in batches]),
    )


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
        "stock_phrase_share": stock_phrase(responses)[1],
        "truncated_share": rollout.truncated_share,
    }
    gold_scores = None
    if gold is not None:
        gold_scores = torch.tensor(call_scorer(gold, prompt_texts, responses), dtype=torch.float64)
        stats["gold"] = gold_scores.mean().item()
    return Batch(rollout, prompt_texts, responses, scores, logps.detach(), ref_logps.detach(), mask, stats, gold_scores)


# ---------------------------------------------------------------- monitoring and guards


HEADLINE = ("reward", "gold", "kl", "entropy", "response_length", "distinct_2")  # logged with rolling means


def run_log(config: OnlineRLConfig, out: Path, resume_step: int | None, enabled: bool) -> RunLog:
    """metrics.jsonl of an online run: a row per iteration, with rolling-window means (`*_avg`) of HEADLINE."""
    return RunLog(out, keep_until=resume_step, enabled=enabled, rolling=HEADLINE, window=config.window, config=config)


class TruncationAlarm:
    """Warns loudly when over TRUNCATION_WARNING of an iteration's responses hit max_new_tokens, at most once every
    10 steps."""

    def __init__(self, max_new_tokens: int):
        self.max_new_tokens = max_new_tokens
        self.warned_at: int | None = None

    def check(self, step: int, share: float) -> None:
        if share > TRUNCATION_WARNING and (self.warned_at is None or step - self.warned_at >= 10):
            self.warned_at = step
            warn_if_truncated(share, self.max_new_tokens, f" at step {step}")


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
    runtime,
) -> tuple[int, Path | None, dict]:
    """With `resume`, restore the newest checkpoint (checkpoints.resume): modules, optimizer, this process's sampler
    and the prompt position. Returns (step, the checkpoint, the stage's state); (0, None, {}) when starting afresh."""
    resumed = checkpoints.resume(runtime, out, modules, {"adamw": optimizer}) if config.resume else None
    if resumed is None:
        return 0, None, {}
    prompts.position = resumed.state["prompt_position"]
    if "generator" in resumed.mine:
        generator.set_state(resumed.mine["generator"])
    return resumed.step, resumed.path, resumed.state


def checkpoint_now(
    out: Path,
    step: int,
    modules: dict,
    optimizer,
    generator: torch.Generator,
    prompts: PromptStream,
    runtime,
    **extra,
) -> Path | None:
    """An online stage's checkpoint (checkpoints.save): modules, optimizer, the prompt position, and every process's
    sampler, so each resumes its own stream."""
    state = {"prompt_position": prompts.position, **extra}
    return checkpoints.save(
        runtime, out, step, modules, {"adamw": optimizer}, state, keep=2, per_rank={"generator": generator.get_state()}
    )


def finish(
    name: str, config: OnlineRLConfig, policy: Policy, out: Path, row: dict, runtime=None, log: RunLog | None = None
) -> dict:
    """Save the final policy as a plain HF directory, write summary.json (the main process, when distributed) and
    close the run log's trackers."""
    if log is not None:
        log.close()
    from .atomic import write_json
    from .cards import model_card
    from .models.loading import save_model

    if runtime is not None and not runtime.is_main:
        runtime.barrier()
        return {"stage": name, "final": row}
    summary = {
        "stage": name,
        "model": str(policy.path),
        "steps": config.steps,
        "processes": runtime.world if runtime else 1,
        "final": row,
        "model_dir": str(out / "model"),
    }
    save_model(
        policy.model,
        load_tokenizer(policy.path),
        out / "model",
        merge_lora=config.lora.merge if config.lora else True,
        card=model_card(name, config, {**summary, **row}),
    )
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


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
