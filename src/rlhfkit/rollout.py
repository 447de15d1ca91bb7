"""Sampling responses from a policy: batched, KV-cached generation that stops each sequence at EOS.

`generate` is the engine (tokens, masks, per-token log-probs); `sample_responses` wraps it for stages
that want text. The log-prob of each sampled token is taken under the temperature-scaled distribution
before top-k / top-p filtering, which is the distribution the RL losses train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data.records import PromptValue
from .data.tokenize import Encoder, pad_left
from .train import console, progress_bar

TRUNCATION_WARNING = 0.2


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] right-padded with pad after EOS
    response_mask: torch.Tensor  # [B, R] 1 on generated tokens up to and including EOS
    logps: torch.Tensor  # [B, R] log-prob of each sampled token (0 where masked)
    truncated: torch.Tensor  # [B] bool: reached max_new_tokens without EOS

    @property
    def truncated_share(self) -> float:
        return self.truncated.float().mean().item()

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and response as one batch: input_ids and attention_mask."""
        return torch.cat([self.prompt_ids, self.response_ids], 1), torch.cat([self.prompt_mask, self.response_mask], 1)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering: excluded tokens get -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, eos_id: int, pad_id: int, max_new_tokens: int = 48,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
) -> Rollout:
    """Sample continuations of left-padded prompts with the KV cache; stops early once every row has hit EOS."""
    batch = input_ids.shape[0]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1].float()
    next_pos = position_ids[:, -1:] + 1
    mask = attention_mask
    finished = torch.zeros(batch, dtype=torch.bool)
    tokens, logps, alive = [], [], []
    for _ in range(max_new_tokens):
        scaled = logits / temperature
        log_probs = torch.log_softmax(scaled, dim=-1)
        probs = torch.softmax(filter_logits(scaled, top_k, top_p), dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        alive.append(~finished)
        logps.append(torch.where(finished, torch.zeros(batch), log_probs.gather(1, token[:, None]).squeeze(1)))
        tokens.append(token)
        finished = finished | (token == eos_id)
        if bool(finished.all()):
            break  # early exit: every sequence has stopped
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype)], 1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1].float()
        next_pos = next_pos + 1
    return Rollout(
        prompt_ids=input_ids, prompt_mask=attention_mask, response_ids=torch.stack(tokens, 1), response_mask=torch.stack(alive, 1).long(),
        logps=torch.stack(logps, 1), truncated=~finished,
    )


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    texts = []
    for ids, mask in zip(rollout.response_ids.tolist(), rollout.response_mask.tolist()):
        kept = [t for t, m in zip(ids, mask) if m and t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    return texts


def warn_if_truncated(share: float, max_new_tokens: int, where: str = "") -> None:
    if share > TRUNCATION_WARNING:
        console.print(f"[bold red]WARNING{where}: {share:.0%} of responses were cut at max_new_tokens={max_new_tokens} without EOS; "
                      "their rewards judge unfinished text. Raise max_new_tokens.[/]")


@dataclass
class Samples:
    prompts: list[str]  # rendered prompt text
    responses: list[str]
    truncated: list[bool]  # hit max_new_tokens without EOS

    @property
    def truncated_share(self) -> float:
        return sum(self.truncated) / max(1, len(self.truncated))


def sample_responses(
    model, tokenizer, prompts: list[PromptValue], *, max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
    top_k: int = 0, batch_size: int = 64, max_prompt_length: int = 128, seed: int = 0, description: str = "sampling",
    on_batch=None,
) -> Samples:
    """One sampled response per prompt (repeat prompts for several); `on_batch(rollout)` sees each batch's tokens and log-probs."""
    encoder = Encoder(tokenizer, max_length=max_prompt_length + max_new_tokens, max_prompt_length=max_prompt_length)
    ids = [encoder.prompt_ids(prompt)[0] for prompt in prompts]
    rendered = [tokenizer.decode(p) for p in ids]
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    responses, truncated = [], []
    with progress_bar(description, len(prompts)) as advance:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            batch = pad_left(chunk, tokenizer.pad_token_id)
            rollout = generate(model, batch["input_ids"], batch["attention_mask"], eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                               max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            responses += decode_responses(tokenizer, rollout)
            truncated += rollout.truncated.tolist()
            if on_batch is not None:
                on_batch(rollout)
            advance(len(chunk))
    model.train(was_training)
    samples = Samples(prompts=rendered, responses=responses, truncated=truncated)
    warn_if_truncated(samples.truncated_share, max_new_tokens, f" ({description})")
    return samples
