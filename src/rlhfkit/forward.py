"""The model's forward pass where training and scoring need it: padding-free packed rows for the decoders that
allow it (no padding through the matmuls, the output layer only where a token is predicted), response log-probs,
per-token log-probs and entropies for the online stages, and the plain padded path for every other model. Where the
vocabulary is large, the output layer runs on chunks of positions and only each position's log-probability and
entropy are kept: the [tokens, vocab] logits never exist at once (`LOGITS_PATHS`, `chunked_logps`)."""

from __future__ import annotations

import inspect

import torch
from torch.utils.checkpoint import checkpoint

from .data.tokenize import pack_rows
from .errors import ConfigError
from .losses import entropy_from_logits, sequence_logps
from .models.loading import base_model

# Decoders whose output layer is a plain projection of the last hidden state (no logit scaling or soft-capping), and
# whose attention honours packed position ids: the only ones the padding-free path below runs on.
PACKABLE = ("gpt2", "llama", "mistral", "qwen2", "qwen3")

# How the output layer meets the log-softmax: "full" computes the [tokens, vocab] logits, "chunked" a chunk of
# positions at a time, "auto" chunks from CHUNKED_VOCAB tokens on (Qwen 151,936, Llama-3 128,256, Gemma 256,000;
# not GPT-2's 50,257 or Llama-2's 32,000, where the logits are small and recomputing a chunk costs more than it saves).
LOGITS_PATHS = ("auto", "chunked", "full")
CHUNKED_VOCAB = 65_536
CHUNK_SIZE = 256  # positions per chunk: 256 x 151,936 fp32 logits = 156 MB, against 1.2 GB for a 4 x 512 batch


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


def labelled_hidden(model: torch.nn.Module, sequences: list[list[int]], label_masks: list[list[int]], pad_id: int):
    """Padding-free forward up to the output layer (None where decoder_parts refuses the model): the last hidden
    states [N, hidden] at the N positions that predict a labelled token (label mask 1; a sequence's first token has no
    predictor), the output layer, the token each position predicts, the sequence it belongs to and the token's index
    in its sequence. No padding goes through the matmuls."""
    parts = decoder_parts(model)
    if parts is None:
        return None
    backbone, lm_head = parts
    hidden, starts = packed_hidden(backbone, sequences, pad_id)
    where, labels, owner, index = [], [], [], []
    for i, (seq, mask, start) in enumerate(zip(sequences, label_masks, starts)):
        predicted = [j for j in range(1, len(seq)) if mask[j]]
        where.extend(start + j - 1 for j in predicted)
        labels.extend(seq[j] for j in predicted)
        owner.extend([i] * len(predicted))
        index.extend(predicted)
    device = hidden.device
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return hidden[as_tensor(where)], lm_head, as_tensor(labels), as_tensor(owner), as_tensor(index)


def response_masks(prompts: list[list[int]], responses: list[list[int]]) -> list[list[int]]:
    """Label masks of prompt + response sequences: 1 on the response tokens."""
    return [[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)]


def response_hidden(model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """labelled_hidden of prompt + response sequences with the response tokens labelled (None where decoder_parts
    refuses the model); the last item is each predicted token's index in its response."""
    packed = labelled_hidden(
        model, [p + r for p, r in zip(prompts, responses)], response_masks(prompts, responses), pad_id
    )
    if packed is None:
        return None
    hidden, lm_head, labels, owner, index = packed
    prompt_lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=index.device)
    return hidden, lm_head, labels, owner, index - prompt_lengths[owner]


def response_logits(model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """response_hidden through the output layer: the float logits [N, V] at the N positions that predict a response
    token, the token each predicts, the sequence it belongs to and its index in the response (None where
    decoder_parts refuses the model). The output layer runs only at those N positions."""
    packed = response_hidden(model, prompts, responses, pad_id)
    if packed is None:
        return None
    hidden, lm_head, labels, owner, slot = packed
    return lm_head(hidden).float(), labels, owner, slot


def vocab_size(lm_head: torch.nn.Module) -> int:
    """Rows of the output layer (a LoRA-wrapped layer keeps `out_features`)."""
    return getattr(lm_head, "out_features", None) or lm_head.weight.shape[0]


def use_chunked(model: torch.nn.Module, logits: str) -> bool:
    """Whether `logits` ("auto", "chunked" or "full") takes the chunked path on `model`. "chunked" on a model
    decoder_parts refuses (its output layer post-processes the logits, or it is wrapped for DDP) is a ConfigError."""
    if logits not in LOGITS_PATHS:
        raise ConfigError(f"logits: unknown path {logits!r}; choose one of {', '.join(LOGITS_PATHS)}")
    if logits == "full":
        return False
    parts = decoder_parts(model)
    if parts is None:
        if logits == "chunked":
            raise ConfigError(
                "logits: 'chunked' needs the packed forward of a plain decoder "
                f"({', '.join(PACKABLE)}) in one process; this model is not one. Set logits=auto or logits=full"
            )
        return False
    return logits == "chunked" or vocab_size(parts[1]) >= CHUNKED_VOCAB


class LabelLogpsEntropy(torch.autograd.Function):
    """(log p(label), entropy) [n] of float logits [n, V], saving only the logits: its backward writes the gradient
    into at most two [n, V] buffers, where autograd through log-softmax and entropy would keep five or six. Without
    `with_entropy` the entropy is an empty tensor and no entropy work is done."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, with_entropy: bool = True):
        logz = torch.logsumexp(logits, dim=-1)
        entropy = logz.new_zeros(0)
        if with_entropy:
            probs = torch.softmax(logits, dim=-1)
            entropy = -torch.special.xlogy(probs, probs).sum(-1)  # xlogy: a token of p = 0 adds 0, not NaN
            del probs
        ctx.with_entropy = with_entropy
        ctx.save_for_backward(logits, labels, logz, entropy)
        return logits.gather(1, labels[:, None]).squeeze(1) - logz, entropy

    @staticmethod
    def backward(ctx, grad_logps: torch.Tensor | None, grad_entropy: torch.Tensor | None):
        logits, labels, logz, entropy = ctx.saved_tensors
        probs = torch.exp(logits - logz[:, None])
        grad_logps = torch.zeros_like(logz) if grad_logps is None else grad_logps
        # d log p(y) / dz = onehot(y) - p;  d H / dz = -p * (log p + H)
        if not ctx.with_entropy or grad_entropy is None:
            grad = probs.mul_(-grad_logps[:, None])
        else:
            grad = (logits - logz[:, None]).add_(entropy[:, None]).mul_(probs).mul_(-grad_entropy[:, None])
            grad.sub_(probs.mul_(grad_logps[:, None]))
        return grad.scatter_add_(1, labels[:, None], grad_logps[:, None]), None, None


def _chunk_logps(hidden, labels, lm_head, temperature: float, with_entropy: bool):
    logits = lm_head(hidden).float()
    if temperature != 1.0:
        logits = logits.div_(temperature)  # in place: a Linear's (or LoRA's) backward does not need its output
    return LabelLogpsEntropy.apply(logits, labels, with_entropy)


def chunked_logps(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    labels: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(label) [N] under lm_head(hidden) / temperature, and the entropies [N] when asked, `chunk_size`
    positions at a time. With gradients on, each chunk's forward is recomputed in the backward pass (activation
    checkpointing), so neither pass keeps more than one chunk's [chunk, vocab] logits; LoRA on the output layer,
    tied embeddings and dropout (its RNG state is replayed) behave as in one call."""
    if chunk_size < 1:
        raise ConfigError(f"logits_chunk_size must be >= 1, got {chunk_size}")
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in lm_head.parameters()))
    outs = []
    for h, y in zip(hidden.split(chunk_size), labels.split(chunk_size)):
        if recompute:
            outs.append(checkpoint(_chunk_logps, h, y, lm_head, temperature, with_entropy, use_reentrant=False))
        else:
            outs.append(_chunk_logps(h, y, lm_head, temperature, with_entropy))
    if not outs:  # no predicted position
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    logps = torch.cat([o[0] for o in outs])
    return logps, (torch.cat([o[1] for o in outs]) if with_entropy else None)


def labelled_logps(
    model: torch.nn.Module,
    sequences: list[list[int]],
    label_masks: list[list[int]],
    pad_id: int,
    logits: str = "auto",
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of the labelled tokens' log-probs (label mask 1), and their count (a sequence's first token
    has no prediction): padding-free where labelled_hidden can (the output layer in chunks where use_chunked says so),
    else one right-padded batch through the whole model."""
    chunked = use_chunked(model, logits)
    packed = labelled_hidden(model, sequences, label_masks, pad_id)
    if packed is None:
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        attention, labelled = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
        for i, (seq, mask) in enumerate(zip(sequences, label_masks)):
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention[i, : len(seq)] = 1
            labelled[i, : len(seq)] = torch.tensor(mask, dtype=torch.long)
        device = next(model.parameters()).device
        input_ids, attention, labelled = input_ids.to(device), attention.to(device), labelled.to(device)
        full = model(input_ids=input_ids, attention_mask=attention).logits
        # Shift: logits at t predict token t+1; only labelled tokens count.
        return sequence_logps(full[:, :-1], input_ids[:, 1:], labelled[:, 1:])
    hidden, lm_head, labels, owner, _ = packed
    if chunked:
        token_logps, _ = chunked_logps(hidden, lm_head, labels, chunk_size=chunk_size)
    else:
        full = lm_head(hidden).float()
        token_logps = full.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(full, dim=-1)
    sums = torch.zeros(len(sequences), dtype=token_logps.dtype, device=hidden.device).index_add(0, owner, token_logps)
    return sums, torch.bincount(owner, minlength=len(sequences)).to(token_logps.dtype)


def response_logps(
    model: torch.nn.Module,
    prompts: list[list[int]],
    responses: list[list[int]],
    pad_id: int,
    logits: str = "auto",
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of the response tokens' log-probs, and their count: labelled_logps of prompt + response."""
    sequences = [p + r for p, r in zip(prompts, responses)]
    return labelled_logps(model, sequences, response_masks(prompts, responses), pad_id, logits, chunk_size)


def takes_logits_to_keep(model) -> bool:
    base = base_model(model)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def token_logps(
    model,
    input_ids,
    attention_mask,
    prompt_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    logits: str = "auto",
    chunk_size: int = CHUNK_SIZE,
):
    """Per-token log-probs [B, R] of the response part (columns from prompt_len) under logits / temperature, and
    their entropies; positions skip left padding. Padding-free where the model allows (prompt padding and the padding
    after each response never reach the matmuls; the output layer runs on response positions only, in chunks where
    use_chunked says so); there the positions the attention mask leaves out get 0."""
    chunked = use_chunked(model, logits)
    rows = range(input_ids.shape[0])
    prompts = [input_ids[i, :prompt_len][attention_mask[i, :prompt_len].bool()].tolist() for i in rows]
    responses = [input_ids[i, prompt_len:][attention_mask[i, prompt_len:].bool()].tolist() for i in rows]
    packed = response_hidden(model, prompts, responses, pad_id=0) if all(prompts) and all(responses) else None
    if packed is None:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        keep = {"logits_to_keep": input_ids.shape[1] - prompt_len + 1} if takes_logits_to_keep(model) else {}
        full = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **keep).logits
        # Logits at t predict token t+1: the response starts at prompt_len.
        full = full[:, -(input_ids.shape[1] - prompt_len) - 1 : -1].float() / temperature
        logps = torch.log_softmax(full, dim=-1).gather(-1, input_ids[:, prompt_len:, None]).squeeze(-1)
        return logps, (entropy_from_logits(full) if with_entropy else None)
    hidden, lm_head, labels, owner, slot = packed
    if chunked:
        flat, flat_entropy = chunked_logps(hidden, lm_head, labels, temperature, with_entropy, chunk_size)
    else:
        full = lm_head(hidden).float() / temperature
        flat = torch.log_softmax(full, dim=-1).gather(1, labels[:, None]).squeeze(1)
        flat_entropy = entropy_from_logits(full) if with_entropy else None
    shape = (input_ids.shape[0], input_ids.shape[1] - prompt_len)

    def scatter(values: torch.Tensor) -> torch.Tensor:  # [N] -> [B, R], 0 where the attention mask leaves out
        return torch.zeros(shape, dtype=values.dtype, device=values.device).index_put((owner, slot), values)

    return scatter(flat), (scatter(flat_entropy) if with_entropy else None)
