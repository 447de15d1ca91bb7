"""Lean KV-cached decoding: one new token per row per step, straight through the model's own layers.

A decode step of a small model is mostly overhead, not arithmetic: transformers rebuilds the attention mask, grows
every layer's cache with `torch.cat` (a fresh copy of the whole cache per layer per token) and wraps each call in
several decorators. Here the cache is allocated once, at its final size, and written in place; the key mask is a
boolean row per sequence; each layer's projections, norms and MLP are the model's own modules (so LoRA adapters,
biases and dropout behave as in the model's forward), and only the attention arithmetic is spelled out. The output
matches the model's forward to float rounding (tests/test_decode.py, per architecture).

Only decoders whose layer structure is known take this path: GPT-2 and the Llama family (Llama, Mistral, Qwen2,
Qwen3). Anything else, or a variant this code does not reproduce (GPT-2's per-layer attention scaling or upcast
attention, a sliding window shorter than the sequence, a cache without per-layer tensors), decodes through the
model's forward as before (`LeanDecoder.attach` returns None).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from .models.loading import base_model

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")


def _supported(base, total_len: int) -> bool:
    config = getattr(base, "config", None)
    kind = getattr(config, "model_type", None)
    if kind == "gpt2":
        return (
            not config.scale_attn_by_inverse_layer_idx
            and not config.reorder_and_upcast_attn
            and not config.add_cross_attention
        )
    if kind in LLAMA_FAMILY:
        window = getattr(config, "sliding_window", None)
        uses_window = getattr(config, "use_sliding_window", True) and window is not None
        return not uses_window or total_len <= window
    return False


class LeanDecoder:
    """Decode state for one batch: a preallocated K/V cache per layer, the key mask, and the write position."""

    def __init__(self, base, keys: list[torch.Tensor], values: list[torch.Tensor], valid: torch.Tensor, length: int):
        self.base = base
        self.kind = base.config.model_type
        self.keys, self.values, self.valid, self.length = keys, values, valid, length
        if self.kind == "gpt2":
            self.backbone = base.transformer
        else:
            self.backbone = base.model
            first = self.backbone.layers[0].self_attn
            self.rotate = sys.modules[type(first).__module__].apply_rotary_pos_emb
        self.head = base.get_output_embeddings()

    @classmethod
    def attach(cls, model, cache, attention_mask: torch.Tensor, new_tokens: int) -> LeanDecoder | None:
        """Take over decoding after a prefill: copy the prefill's cache (rows aligned with `attention_mask`) into
        buffers with room for `new_tokens` more positions. None when this model or cache cannot take the lean path."""
        base = base_model(model)
        prompt_len = attention_mask.shape[1]
        layers = getattr(cache, "layers", None)
        if not _supported(base, prompt_len + new_tokens) or not layers:
            return None
        if any(getattr(layer, "keys", None) is None or layer.keys.shape[2] != prompt_len for layer in layers):
            return None
        capacity = prompt_len + new_tokens
        keys, values = [], []
        for layer in layers:
            for source, store in ((layer.keys, keys), (layer.values, values)):
                buffer = source.new_empty(*source.shape[:2], capacity, source.shape[3])
                buffer[:, :, :prompt_len] = source
                store.append(buffer)
        valid = torch.zeros(attention_mask.shape[0], capacity, dtype=torch.bool, device=attention_mask.device)
        valid[:, :prompt_len] = attention_mask.bool()
        return cls(base, keys, values, valid, prompt_len)

    def select(self, index: torch.Tensor) -> None:
        """Keep only these rows (ended sequences leave the batch)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.valid = self.valid.index_select(0, index)

    def _attend(
        self, attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, dropout: float
    ) -> torch.Tensor:
        slot = self.length
        self.keys[layer][:, :, slot] = k[:, :, 0]
        self.values[layer][:, :, slot] = v[:, :, 0]
        n = slot + 1
        keys, values = self.keys[layer][:, :, :n], self.values[layer][:, :, :n]
        rows, heads, kv_heads = q.shape[0], q.shape[1], keys.shape[1]
        # One query per row: two small batched matmuls beat the fused attention kernels, which are built for long
        # queries (CPU flash attention spends ~5x longer here). Grouped-query attention: the query heads that share a
        # key/value head are stacked as that head's queries, so no key or value is copied.
        q = q.reshape(rows, kv_heads, heads // kv_heads, q.shape[-1])
        scores = torch.matmul(q, keys.transpose(2, 3)) * attn.scaling
        scores = scores.masked_fill(~self.valid[:, None, None, :n], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
        if dropout:
            weights = F.dropout(weights, p=dropout)
        return torch.matmul(weights, values).reshape(rows, 1, -1)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Feed one token per row at `positions` ([rows, 1]); rows not `live` are masked out of later steps.
        Returns the float logits [rows, vocab] for the next token."""
        self.valid[:, self.length] = live
        ids = tokens[:, None]
        hidden = self._gpt2(ids, positions) if self.kind == "gpt2" else self._llama(ids, positions)
        self.length += 1
        return self.head(hidden[:, -1]).float()

    def _gpt2(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        t = self.backbone
        hidden = t.drop(t.wte(ids) + t.wpe(positions))
        for i, block in enumerate(t.h):
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(hidden)).split(attn.split_size, dim=2)
            q, k, v = (x.view(x.shape[0], 1, -1, attn.head_dim).transpose(1, 2) for x in (q, k, v))
            out = self._attend(attn, q, k, v, i, attn.attn_dropout.p if self.base.training else 0.0)
            hidden = hidden + attn.resid_dropout(attn.c_proj(out))
            hidden = hidden + block.mlp(block.ln_2(hidden))
        return t.ln_f(hidden)

    def _llama(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        m = self.backbone
        hidden = m.embed_tokens(ids)
        cos, sin = m.rotary_emb(hidden, position_ids=positions)
        for i, layer in enumerate(m.layers[: self.base.config.num_hidden_layers]):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            shape = (x.shape[0], 1, -1, attn.head_dim)
            q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), attn.v_proj(x).view(shape).transpose(1, 2)
            q, k = self.rotate(q, k, cos, sin)
            out = self._attend(attn, q, k, v, i, attn.attention_dropout if self.base.training else 0.0)
            hidden = hidden + attn.o_proj(out)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return m.norm(hidden)
