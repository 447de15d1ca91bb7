"""The model's forward pass where training and scoring need it: padding-free packed rows for the decoders that
allow it (no padding through the matmuls, the output layer only where a token is predicted), response log-probs,
per-token log-probs and entropies for the online stages, and the plain padded path for every other model."""

from __future__ import annotations

import inspect

import torch

from .data.tokenize import pack_rows, pad_sequences
from .losses import entropy_from_logits, sequence_logps
from .models.loading import base_model

# Decoders whose output layer is a plain projection of the last hidden state (no logit scaling or soft-capping), and
# whose attention honours packed position ids: the only ones the padding-free path below runs on.
PACKABLE = ("gpt2", "llama", "mistral", "qwen2", "qwen3")


def decoder_parts(model: torch.nn.Module, head: str = "lm_head") -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(backbone, output layer) of a plain or LoRA-wrapped decoder in PACKABLE, else None (wrapped for DDP/FSDP, an
    encoder, or an architecture that post-processes its logits): the caller then runs the whole model on a padded batch.
    `head` is "lm_head" for a causal LM, "score" for a reward model."""
    from torch.distributed.fsdp import FSDPModule
    from transformers import PreTrainedModel

    if isinstance(model, FSDPModule):  # FSDP2 all-gathers the root's weights (embeddings, output) in its own forward
        return None
    base = base_model(model)
    if not isinstance(base, PreTrainedModel) or getattr(base.config, "model_type", None) not in PACKABLE:
        return None
    backbone = getattr(base, base.base_model_prefix, None)
    output = base.get_output_embeddings() if head == "lm_head" else getattr(base, head, None)
    return (backbone, output) if backbone is not None and output is not None else None


def attention_cost(backbone: torch.nn.Module) -> float:
    """Attention work per token per key, relative to the linear layers' work per token (what `pack_rows` weighs
    wider rows by): 4 * hidden FLOPs per layer (scores, weighted sum) against 2 per weight of every linear layer.
    Computed once per module."""
    cached = getattr(backbone, "_rlhfkit_attention_cost", None)
    if cached is None:
        from transformers.pytorch_utils import Conv1D

        config = backbone.config
        hidden = getattr(config, "hidden_size", None) or config.n_embd
        layers = getattr(config, "num_hidden_layers", None) or config.n_layer
        weights = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
        cached = 4 * hidden * layers / max(2 * weights, 1)
        backbone._rlhfkit_attention_cost = cached
    return cached


def packed_hidden(backbone: torch.nn.Module, sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, list[int]]:
    """Last hidden states of packed `sequences`, flattened to [rows * width, hidden], and where each sequence starts."""
    packed = pack_rows(sequences, pad_id, attention_cost=attention_cost(backbone))
    device = next(backbone.parameters()).device
    hidden = backbone(
        input_ids=packed["input_ids"].to(device), position_ids=packed["position_ids"].to(device), use_cache=False
    ).last_hidden_state
    width = packed["input_ids"].shape[1]
    return hidden.reshape(-1, hidden.shape[-1]), [r * width + s for r, s in zip(packed["row"], packed["start"])]


def response_logits(model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Padding-free forward (None where decoder_parts refuses the model): the float logits [N, V] at the N positions
    that predict a response token, the token each predicts, the sequence it belongs to and its index in the response.
    No padding goes through the matmuls, and the output layer runs only at those N positions."""
    parts = decoder_parts(model)
    if parts is None:
        return None
    backbone, lm_head = parts
    hidden, starts = packed_hidden(backbone, [p + r for p, r in zip(prompts, responses)], pad_id)
    where, labels, owner, slot = [], [], [], []
    for i, (p, r, start) in enumerate(zip(prompts, responses, starts)):
        first = max(
            len(p), 1
        )  # index in the sequence of the first predicted token (a sequence's first has no predictor)
        where.extend(range(start + first - 1, start + len(p) + len(r) - 1))
        labels.extend((p + r)[first:])
        owner.extend([i] * (len(p) + len(r) - first))
        slot.extend(range(first - len(p), len(r)))
    device = hidden.device
    logits = lm_head(hidden[torch.tensor(where, device=device)]).float()
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return logits, as_tensor(labels), as_tensor(owner), as_tensor(slot)


def response_logps(
    model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of the response tokens' log-probs, and their count (a sequence's first token has no
    prediction): padding-free where response_logits can, else one right-padded batch through the whole model."""
    packed = response_logits(model, prompts, responses, pad_id)
    if packed is None:
        batch = {k: v.to(next(model.parameters()).device) for k, v in pad_sequences(prompts, responses, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Shift: logits at t predict token t+1; only response tokens count.
        return sequence_logps(logits[:, :-1], batch["input_ids"][:, 1:], batch["response_mask"][:, 1:])
    logits, labels, owner, _ = packed
    token_logps = logits.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    sums = torch.zeros(len(prompts), dtype=token_logps.dtype, device=logits.device).index_add(0, owner, token_logps)
    return sums, torch.bincount(owner, minlength=len(prompts)).to(token_logps.dtype)


def takes_logits_to_keep(model) -> bool:
    base = base_model(model)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def token_logps(
    model, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0, with_entropy: bool = False
):
    """Per-token log-probs [B, R] of the response part (columns from prompt_len) under logits / temperature, and
    their entropies; positions skip left padding. Padding-free where the model allows (prompt padding and the padding
    after each response never reach the matmuls; the output layer runs on response positions only); there the
    positions the attention mask leaves out get 0."""
    rows = range(input_ids.shape[0])
    prompts = [input_ids[i, :prompt_len][attention_mask[i, :prompt_len].bool()].tolist() for i in rows]
    responses = [input_ids[i, prompt_len:][attention_mask[i, prompt_len:].bool()].tolist() for i in rows]
    packed = response_logits(model, prompts, responses, pad_id=0) if all(prompts) and all(responses) else None
    if packed is None:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        keep = {"logits_to_keep": input_ids.shape[1] - prompt_len + 1} if takes_logits_to_keep(model) else {}
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **keep).logits
        # Logits at t predict token t+1: the response starts at prompt_len.
        logits = logits[:, -(input_ids.shape[1] - prompt_len) - 1 : -1].float() / temperature
        logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, prompt_len:, None]).squeeze(-1)
        return logps, (entropy_from_logits(logits) if with_entropy else None)
    logits, labels, owner, slot = packed
    logits = logits / temperature
    shape = (input_ids.shape[0], input_ids.shape[1] - prompt_len)
    flat = torch.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    logps = torch.zeros(shape, dtype=flat.dtype, device=flat.device).index_put((owner, slot), flat)
    if not with_entropy:
        return logps, None
    entropy = torch.zeros(shape, dtype=flat.dtype, device=flat.device).index_put(
        (owner, slot), entropy_from_logits(logits)
    )
    return logps, entropy
