"""Sampling responses from a policy: batched, KV-cached generation that stops each sequence at EOS."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data.records import PromptValue
from .data.tokenize import Encoder, pad_left
from .train import progress_bar


@dataclass
class Samples:
    prompts: list[str]  # rendered prompt text
    responses: list[str]
    truncated: list[bool]  # hit max_new_tokens without EOS

    @property
    def truncated_share(self) -> float:
        return sum(self.truncated) / max(1, len(self.truncated))


@torch.no_grad()
def sample_responses(
    model, tokenizer, prompts: list[PromptValue], *, max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
    top_k: int = 0, batch_size: int = 64, max_prompt_length: int = 128, seed: int = 0, description: str = "sampling",
) -> Samples:
    """One sampled response per prompt (repeat prompts for several); generation uses the model's KV cache."""
    encoder = Encoder(tokenizer, max_length=max_prompt_length + max_new_tokens, max_prompt_length=max_prompt_length)
    rendered, ids = [], []
    for prompt in prompts:
        p_ids, _ = encoder.prompt_ids(prompt)
        ids.append(p_ids)
        rendered.append(tokenizer.decode(p_ids))
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    responses, truncated = [], []
    eos = tokenizer.eos_token_id
    with progress_bar(description, len(prompts)) as advance:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            batch = pad_left(chunk, tokenizer.pad_token_id)
            out = model.generate(
                **batch, do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, use_cache=True,
            )
            new = out[:, batch["input_ids"].shape[1] :]
            for row in new.tolist():
                stop = row.index(eos) if eos in row else None
                truncated.append(stop is None)
                kept = row[:stop] if stop is not None else row
                kept = [t for t in kept if t != tokenizer.pad_token_id]
                responses.append(tokenizer.decode(kept, skip_special_tokens=True))
            advance(len(chunk))
    model.train(was_training)
    return Samples(prompts=rendered, responses=responses, truncated=truncated)
