"""Parts shared by the online RL stages (ppo, grpo, rloo, reinforce-pp, online-dpo, bon, bon-sweep): policy and
reference, rewards, rollouts, per-token log-probs, monitoring with rolling windows, guards, and atomic checkpoints
that resume."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from . import checkpoints
from .config import OnlineRLConfig, RewardSpec
from .console import console
from .data.records import load_records
from .data.tokenize import Encoder, pad_left
from .errors import ConfigError, TrainingError
from .evaluate.diversity import distinct_n, stock_phrase
from .forward import CHUNK_SIZE, token_logps
from .losses import truncated_importance_weights
from .models.loading import apply_lora, load_causal_lm, load_tokenizer
from .resolve import resolve_model_path
from .rollout import TRUNCATION_WARNING, Rollout, decode_responses, generate, stop_token_ids, warn_if_truncated
from .runtime import gathered, save_trained
from .scoring import RewardModelScorer, call_scorer, combine_rewards, load_scorer
from .train import Alarms, RunLog, gradient_problem

# ---------------------------------------------------------------- rewards


def weighted_reward(source_scores: torch.Tensor, weights) -> torch.Tensor:
    """The combined reward of each response: sum over sources s of weights[s] * source_scores[:, s].

    `source_scores` is [responses, sources] (each source a reward-model head or a scorer), `weights` one number per
    source. This is the one way rlhfkit combines objectives: PPO, GRPO, RLOO, REINFORCE++, online DPO, best-of-n,
    bon-sweep and frontier score with it through RewardFunction, and `rlhfkit pareto` sweeps the weights."""
    weights = torch.as_tensor(weights, dtype=source_scores.dtype)
    if source_scores.ndim != 2 or weights.shape != (source_scores.shape[1],):
        raise ValueError(
            f"weighted_reward: {tuple(weights.shape)} weights for scores of shape {tuple(source_scores.shape)} "
            "(one weight per source)"
        )
    return source_scores @ weights


class RewardFunction:
    """The reward sources of a `rewards` list, combined by weighted_reward with each source's `weight`: reward-model
    heads (every head of one model read from one forward pass, the model loaded once however many sources name it)
    and `module:function` callables."""

    def __init__(self, specs: list[RewardSpec]):
        self.specs = list(specs)
        self.sources = []  # (name, spec, a RewardModelScorer or a callable, head index or None)
        scorers: dict[Path, RewardModelScorer] = {}
        for i, spec in enumerate(self.specs):
            if spec.model:
                path = resolve_model_path(spec.model)
                if path not in scorers:
                    scorers[path] = RewardModelScorer(
                        path, ensemble_method=spec.ensemble_method, ensemble_coef=spec.ensemble_coef
                    )
                scorer = scorers[path]
                self.sources.append((f"rm{i}", spec, scorer, scorer.check_head(spec.head, f"rewards[{i}].head")))
            else:
                scorer = load_scorer(spec.function, option=f"rewards[{i}].function")
                self.sources.append((f"fn{i}", spec, scorer, None))
        self.weights = torch.tensor([spec.weight for spec in self.specs])

    @property
    def objectives(self) -> list[str]:
        """What each source scores: a head's objective name (`quality`, or LABEL_0 for an unnamed head) or the
        function's `module:function` spec."""
        return [
            source.objectives[head] if head is not None else spec.function for _, spec, source, head in self.sources
        ]

    @torch.no_grad()
    def source_scores(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """Every source's scores, [responses, sources] (an ensemble's members combined by the source's
        ensemble_method), and the logged parts: each source's mean and an ensemble's disagreement."""
        columns, parts, heads = [], {}, {}
        for name, spec, source, head in self.sources:
            if head is not None:
                if id(source) not in heads:
                    heads[id(source)] = source.head_members(prompts, responses)
                members = heads[id(source)][:, :, head]
                scores = torch.tensor(combine_rewards(members.tolist(), spec.ensemble_method, spec.ensemble_coef))
                if len(members) > 1:
                    # the members' disagreement: std over members, averaged over responses (logged, never trained on)
                    parts[f"reward_{name}_disagreement"] = members.std(dim=0, unbiased=False).nanmean().item()
            else:
                scores = torch.tensor(call_scorer(source, prompts, responses, option=name))
            parts[f"reward_{name}"] = scores.mean().item()
            columns.append(scores.float())
        return torch.stack(columns, 1), parts

    def __call__(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        scores, parts = self.source_scores(prompts, responses)
        return weighted_reward(scores, self.weights), parts


# ---------------------------------------------------------------- policy, reference, prompts


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: object
    reference: torch.nn.Module | None  # None: the adapter-disabled policy (LoRA)
    path: Path
    logits: str = "auto"  # forward.token_logps's output-layer path (config keys logits, logits_chunk_size)
    chunk_size: int = CHUNK_SIZE
    sampler: SamplingCopy | None = None  # rollout_dtype=bfloat16: the bf16 copy the rollout samples with

    def sampling_model(self) -> torch.nn.Module:
        """The model the rollout samples with: the policy itself, or its bf16 copy given the policy's current
        weights (copied before every rollout, so it is never a step behind)."""
        if self.sampler is None:
            return self.model
        self.sampler.refresh()
        return self.sampler.model

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


class SamplingCopy:
    """A persistent bfloat16 copy of the policy for sampling (rollout_dtype=bfloat16). A LoRA policy is copied
    merged, W + the adapter's delta, into a plain model: sampling through the adapter's extra matmuls in bf16 would
    cost more than it saves. `refresh()` copies the policy's current weights in (one pass over them, no allocation);
    `refresh_seconds` is the time the last one took."""

    def __init__(self, model: torch.nn.Module):
        import copy

        lora = hasattr(model, "get_base_model")
        plain = copy.deepcopy(model).merge_and_unload() if lora else copy.deepcopy(model)
        self.model = plain.to(torch.bfloat16).eval().requires_grad_(False)
        source = model.get_base_model() if lora else model
        self.pairs = [(param, _weight_source(source, name)) for name, param in self.model.named_parameters()]
        self.refresh_seconds = 0.0

    @torch.no_grad()
    def refresh(self) -> None:
        import time

        t0 = time.perf_counter()
        for param, weight in self.pairs:
            param.copy_(weight())
        self.refresh_seconds = time.perf_counter() - t0


def _weight_source(model: torch.nn.Module, name: str):
    """A function giving the current value of weight `name` of `model` (plain names, as in the merged copy): a
    LoRA layer's base weight plus its active adapters' deltas, or the parameter itself."""
    from peft.tuners.lora import LoraLayer

    path, _, leaf = name.rpartition(".")
    module = model.get_submodule(path)
    if not isinstance(module, LoraLayer):
        return lambda: getattr(module, leaf)
    base = module.get_base_layer()
    if leaf != "weight":
        return lambda: getattr(base, leaf)
    return lambda: base.weight + sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)


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
    sampler = SamplingCopy(model) if config.rollout_dtype == "bfloat16" else None
    return Policy(model, tokenizer, reference, path, config.logits, config.logits_chunk_size, sampler)


def shard(runtime, policy: Policy, optimizer, *others: torch.nn.Module) -> None:
    """Under FSDP (fsdp=true among 2+ processes) shard the policy (trained by `optimizer`), the reference and
    `others` (such as PPO's value model, also trained by `optimizer`) in place; otherwise nothing. The reference is
    sharded too: a frozen full copy on every process would cost what sharding the policy saves."""
    if not runtime.fsdp:
        return
    if policy.sampler is not None:
        raise ConfigError(
            "rollout_dtype=bfloat16 with fsdp=true: a whole bf16 copy on every process would undo the sharding, and "
            "sampling from the gathered shards in bf16 is not supported; set rollout_dtype=float32 or fsdp=false"
        )
    from .runtime import shard as fully_shard_model

    fully_shard_model(runtime, policy.model, optimizer)
    if policy.reference is not None:
        fully_shard_model(runtime, policy.reference)
    for module in others:
        fully_shard_model(runtime, module, optimizer)


class PolicyTraining(NamedTuple):
    """What a critic-free online stage trains with: the optimizer over the policy's trainable weights, its schedule,
    this process's sampler, the checkpoint modules, where the run starts (step, checkpoint) and the module gradients
    flow through (DDP's wrapper; FSDP2 and one process: the policy itself)."""

    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list
    generator: torch.Generator
    modules: dict
    start_step: int
    last_checkpoint: Path | None
    state: dict
    trained: torch.nn.Module


def start_policy_training(config: OnlineRLConfig, runtime, policy: Policy, prompts: PromptStream) -> PolicyTraining:
    """The shared start of grpo, rloo, reinforce-pp and online-dpo: AdamW (its default decay, on every weight), the
    warm-up schedule, sharding under FSDP (before resuming: the checkpoint holds shards), the resume, then DDP."""
    from .train import adamw, constant_schedule

    optimizer = adamw(trainable(policy.model), config.lr, weight_decay=0.01, eps=1e-5)
    shard(runtime, policy, optimizer)  # fsdp=true under torchrun: policy and reference sharded in place
    scheduler = constant_schedule(optimizer, config.warmup_steps)
    # every process draws the same prompts in the same order, and samples its own responses to its share
    generator = torch.Generator().manual_seed(config.seed + runtime.rank)
    modules = {"policy": policy.model}
    out = Path(config.output_dir)
    start_step, last_checkpoint, state = resume_state(config, out, modules, optimizer, generator, prompts, runtime)
    scheduler.last_epoch = start_step
    # gradients flow through the DDP wrapper (FSDP2 reduce-scatters them itself); sampling uses the plain module
    trained = policy.model if runtime.fsdp or runtime.world == 1 else runtime.accelerator.prepare_model(policy.model)
    return PolicyTraining(
        optimizer, scheduler, trainable(policy.model), generator, modules, start_step, last_checkpoint, state, trained
    )


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
    # [B, R] rollout_dtype=bfloat16: the fp32 policy's log-probs of the sampled tokens before the update (`logps` are
    # the bf16 sampler's); None when the update's own first forward gives them (one gradient step per iteration)
    trainer_logps: torch.Tensor | None = None

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
    sampler = policy.sampling_model()  # the policy, or its bf16 copy (rollout_dtype)
    with gathered(policy.model):  # under FSDP: whole weights for the rollout, no collectives inside generation
        rollout = generate(
            sampler,
            batch["input_ids"],
            batch["attention_mask"],
            eos_id=stop_token_ids(tok, policy.model),
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
    # pass. With a bf16 sampler they are the sampler's, and the update corrects for it (correction_weights).
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
    if policy.sampler is not None:
        stats["sampler_refresh_seconds"] = policy.sampler.refresh_seconds
    gold_scores = None
    if gold is not None:
        gold_scores = torch.tensor(call_scorer(gold, prompt_texts, responses), dtype=torch.float64)
        stats["gold"] = gold_scores.mean().item()
    return Batch(rollout, prompt_texts, responses, scores, logps.detach(), ref_logps.detach(), mask, stats, gold_scores)


# ---------------------------------------------------------------- reduced-precision sampling


@torch.no_grad()
def add_trainer_logps(policy: Policy, batch: Batch, config: OnlineRLConfig, mini_batch_size: int) -> None:
    """rollout_dtype=bfloat16: the fp32 policy's log-probs of the sampled tokens, before any update, into
    `batch.trainer_logps`, when the iteration takes more than one gradient step (an extra no-grad pass, in
    mini-batches). With one step the update's own forward gives them, detached, at no cost."""
    rows = len(batch.scores)
    steps = config.epochs_per_batch * -(-rows // mini_batch_size)
    if policy.sampler is None or steps <= 1:
        return
    input_ids, attention_mask = batch.rollout.full()
    prompt_len = batch.rollout.prompt_ids.shape[1]
    parts = [
        policy.logps(policy.model, input_ids[i : i + mini_batch_size], attention_mask[i : i + mini_batch_size],
                     prompt_len, config.temperature)[0]
        for i in range(0, rows, mini_batch_size)
    ]  # fmt: skip
    batch.trainer_logps = torch.cat(parts)


def correction_weights(
    config: OnlineRLConfig, batch: Batch, rows: torch.Tensor, logps: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """(old log-probs for the ratio, importance weights or None, their stats) of the mini-batch `rows`, whose
    log-probs under the policy being trained are `logps`. float32 rollouts: the sampler is the policy, so the
    sampled log-probs, no weights (the update as it always was). bfloat16: the fp32 policy's log-probs before the
    update (batch.trainer_logps, or `logps` detached at an iteration's only step) and the truncated importance
    weights min(exp(trainer - sampler), is_cap) that correct for sampling with the bf16 copy."""
    if config.rollout_dtype == "float32":
        return batch.logps[rows], None, {}
    trainer = logps.detach() if batch.trainer_logps is None else batch.trainer_logps[rows]
    cap = float("inf") if config.is_cap is None else config.is_cap
    weights, stats = truncated_importance_weights(trainer, batch.logps[rows], mask, cap)
    return trainer, None if config.is_cap is None else weights, stats


# ---------------------------------------------------------------- monitoring and guards


HEADLINE = ("reward", "gold", "kl", "entropy", "response_length", "distinct_2")  # logged with rolling means


def run_log(config: OnlineRLConfig, out: Path, resume_step: int | None, enabled: bool) -> RunLog:
    """metrics.jsonl of an online run: a row per iteration, with rolling-window means (`*_avg`) of HEADLINE."""
    return RunLog(out, keep_until=resume_step, enabled=enabled, rolling=HEADLINE, window=config.window, config=config)


class TruncationAlarm:
    """Warns loudly when over TRUNCATION_WARNING of an iteration's responses hit max_new_tokens, at most once every
    10 steps."""

    def __init__(self, max_new_tokens: int, enabled: bool = True):
        self.max_new_tokens = max_new_tokens
        self.alarms = Alarms(every=10, enabled=enabled)

    def check(self, step: int, share: float) -> None:
        if share > TRUNCATION_WARNING and self.alarms.due(step, "truncated"):
            warn_if_truncated(share, self.max_new_tokens, f" at step {step}")


def zero_variance_groups(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[groups] bool: the groups (k consecutive rows) whose rewards are all equal. Their advantages are 0, so they
    give the policy loss no gradient (GRPO, RLOO; dynamic sampling drops them)."""
    grouped = scores.view(-1, k)
    return (grouped == grouped[:, :1]).all(1)


def progress_metrics(row: dict) -> dict[str, float]:
    """What an online stage's progress line shows of a logged row: the rolling reward, gold (when judged) and KL, and
    the step's grad_norm."""
    gold = {"gold": row["gold_avg"]} if "gold_avg" in row else {}
    return {"reward": row["reward_avg"], **gold, "kl": row["kl_avg"], "grad_norm": row["grad_norm"]}


def batch_reward_std(runtime, scores: torch.Tensor) -> float:
    """The spread of the whole batch's rewards (every process): the zero-variance signal of a stage without groups
    (PPO, REINFORCE++ with one response per prompt); exactly 0 when every reward is equal."""
    everyone = torch.tensor([r for part in runtime.gather_objects(scores.tolist()) for r in part])
    return 0.0 if (everyone == everyone[0]).all() else everyone.std(unbiased=False).item()


def masked_token_share(sampled_tokens: float, loss_mask: torch.Tensor) -> float:
    """The share of the response tokens sampled in an iteration (every sampling round; each response up to and
    including its EOS, never the padding after it) that the loss does not see: dropped groups (dynamic sampling),
    responses cut at max_new_tokens (mask_truncated)."""
    return 1.0 - loss_mask.sum().item() / max(sampled_tokens, 1.0)


ZERO_LOSS_NOTE = (
    "INFO: a policy_loss near 0 is expected: at the first update of every batch the ratio is 1 and the advantages "
    "average 0 (within each group), so the clipped-surrogate loss averages ~0 even when its gradient is not 0; judge "
    "learning by reward, grad_norm and zero_variance_group_share, not by the loss (docs/online-rl.md)"
)


class SignalAlarm:
    """Loud, rate-limited WARNINGs (train.Alarms: each kind at most once every 10 steps) read from an online
    iteration's metrics row, so every online stage calls `check(step, row)` after logging it:
    - over TRUNCATION_WARNING of the responses cut at max_new_tokens (`truncated_share`, as TruncationAlarm);
    - the bf16 sampler drifting from the fp32 policy (`is_logratio_mean` over is_warn_logratio);
    - no learning signal: every group's rewards equal (`zero_variance_group_share` 1), every response token masked
      out of the loss (`masked_token_share` 1), every response of the batch rewarded the same (`reward_std` 0: ppo,
      no groups), or a gradient norm (before clipping) of 0 or not finite (`grad_norm`).
    `group` names the config key of the group size ('group_size', 'k'); `zero_loss_note` prints, at the first
    check, why a clipped-surrogate policy_loss near 0 is no sign of trouble."""

    def __init__(self, config: OnlineRLConfig, group: str | None = None, enabled: bool = True, zero_loss_note=False):
        self.config, self.group = config, group
        self.alarms = Alarms(every=10, enabled=enabled)
        self.truncation = TruncationAlarm(config.max_new_tokens, enabled)
        self.note = zero_loss_note and enabled

    def problems(self, row: dict) -> list[str]:
        """Why the iteration in `row` learned nothing (empty: it had a signal)."""
        config, found = self.config, []
        if row.get("zero_variance_group_share") == 1.0:
            k = getattr(config, self.group)
            found.append(
                f"every group's {k} rewards were equal (zero_variance_group_share=1), so the reward contributes no "
                f"advantage and no gradient; raise temperature or {self.group}, or check the reward (constant? "
                "saturated?)"
            )
        if row.get("reward_std") == 0.0 and config.batch_size > 1:
            found.append(
                f"every response of the batch got the same reward ({row.get('reward', float('nan')):.4g}), so the "
                "reward says nothing about which is better and the update follows only the KL penalty and the value "
                "head's errors; check the reward, or raise temperature"
            )
        if row.get("tie_share") == 1.0:
            found.append(
                "the judge scored both responses of every pair the same (tie_share=1), so there is no pair to learn "
                "from and no step was taken; raise temperature, or check the judge (constant? saturated?)"
            )
        if row.get("masked_token_share") == 1.0:
            why = ""
            if getattr(config, "mask_truncated", False) and row.get("truncated_share") == 1.0:
                why = ": every response hit max_new_tokens and mask_truncated drops those; raise max_new_tokens or set "
                why += "mask_truncated=false"
            found.append(f"every response token was masked out of the loss (masked_token_share=1){why}")
        problem = gradient_problem(row.get("grad_norm"))
        if problem is not None:
            found.append(problem)
        return found

    def check(self, step: int, row: dict) -> None:
        if self.note:
            self.note = False
            console.print(ZERO_LOSS_NOTE, markup=False, highlight=False, soft_wrap=True)
        self.truncation.check(step, row.get("truncated_share", 0.0))
        gap = row.get("is_logratio_mean")
        limit = self.config.is_warn_logratio
        if gap is not None and gap > limit:
            self.alarms.warn(
                step,
                "mismatch",
                f"the bf16 sampler and the fp32 policy disagree: mean |log-ratio| per token {gap:.3g} (max "
                f"{row.get('is_logratio_max', float('nan')):.3g}) is over is_warn_logratio={limit}, and "
                f"{row.get('is_clipped_share', 0.0):.1%} of the importance weights hit is_cap; the correction "
                "grows noisy as the gap grows: lower the temperature, or set rollout_dtype=float32",
            )
        problems = self.problems(row)
        if problems:
            self.alarms.warn(step, "no_signal", "no learning signal: " + "; ".join(problems))


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
    name: str, config: OnlineRLConfig, policy: Policy, out: Path, row: dict, runtime, log: RunLog | None = None
) -> dict:
    """Every process calls this: save the final policy as a plain HF directory (gathered from every process under
    FSDP), write summary.json (the main process) and close the run log's trackers."""
    if log is not None:
        log.close()
    from .atomic import write_json

    summary = {
        "stage": name,
        "model": str(policy.path),
        "steps": config.steps,
        "processes": runtime.world,
        "final": row,
        "model_dir": str(out / "model"),
    }
    save_trained(runtime, policy.model, load_tokenizer(policy.path), out / "model", config, name, {**summary, **row})
    if not runtime.is_main:
        runtime.barrier()
        return {"stage": name, "final": row}
    write_json(out / "summary.json", summary)
    console.print(
        f"{name}: {config.steps} steps; last-window reward {row.get('reward_avg', float('nan')):.3f}, "
        f"gold {row.get('gold_avg', float('nan')):.3f}, KL {row.get('kl_avg', float('nan')):.3f}; model saved to "
        f"{out / 'model'}"
    )
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
