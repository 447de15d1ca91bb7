"""Tiny randomly initialised models of real architectures, for testing every stage against each one.

Each is built from the architecture's own transformers config class (2 layers, hidden size 32, 4 heads) and
saved with `save_pretrained`, next to the embedded default's tokenizer (so the vocabulary is that tokenizer's),
into a plain HF directory that every stage loads like any other model. The Llama, Qwen2 and Gemma tokenizers
get a chat template, so conversation prompts go through `apply_chat_template` there and through the
transcript fallback elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelError

ARCHS = ("llama", "qwen2", "mistral", "gpt2", "gpt_neox", "opt", "phi", "gemma")
CHAT_ARCHS = ("llama", "qwen2", "gemma")

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, POSITIONS = 32, 2, 4, 2, 64, 256

# A role-marker template in the style of Zephyr/ChatML, written with plain text (no new special tokens).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _config(arch: str, vocab_size: int, bos: int, eos: int, pad: int):
    import transformers as tf

    ids = {"vocab_size": vocab_size, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    # Llama-family decoders: grouped-query attention (2 key/value heads for 4 query heads).
    llama_like = {
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": POSITIONS,
        **ids,
    }
    if arch == "llama":
        return tf.LlamaConfig(**llama_like)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if arch == "mistral":
        return tf.MistralConfig(**llama_like, head_dim=HIDDEN // HEADS, sliding_window=POSITIONS)
    if arch == "gemma":
        # Gemma's head_dim defaults to 256 whatever the hidden size; set it to match.
        return tf.GemmaConfig(**llama_like, head_dim=HIDDEN // HEADS)
    if arch == "gpt2":
        return tf.GPT2Config(
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_inner=INTERMEDIATE,
            n_positions=POSITIONS,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=POSITIONS,
            **ids,
        )
    if arch == "opt":
        return tf.OPTConfig(
            hidden_size=HIDDEN,
            word_embed_proj_dim=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            ffn_dim=INTERMEDIATE,
            max_position_embeddings=POSITIONS,
            dropout=0.0,
            attention_dropout=0.0,
            **ids,
        )
    if arch == "phi":
        return tf.PhiConfig(
            hidden_size=HIDDEN,
            intermediate_size=INTERMEDIATE,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=POSITIONS,
            **ids,
        )
    raise ModelError(f"tiny model '{arch}': unknown architecture; choose one of {', '.join(ARCHS)}")


def build_tiny(arch: str, out_dir: str | Path, seed: int = 0, vocab_size: int | None = None) -> Path:
    """Save a tiny random `arch` causal LM with the default tokenizer into `out_dir`; the same seed gives the same
    weights. `vocab_size` (default: the tokenizer's) may be larger: the extra rows of the embedding and output layer
    are ids no token has, as real checkpoints pad theirs, which gives a tiny body a real model's vocabulary."""
    from transformers import AutoModelForCausalLM

    from ..resolve import resolve_model_path
    from .loading import load_tokenizer, quiet_transformers

    quiet_transformers()
    tokenizer = load_tokenizer(resolve_model_path("default"))
    if arch in CHAT_ARCHS:
        tokenizer.chat_template = CHAT_TEMPLATE
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ModelError(f"tiny model: vocab_size {vocab_size} is below the tokenizer's {len(tokenizer)} tokens")
    config = _config(
        arch, vocab_size or len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    # A private RNG stream: building a model leaves the caller's random state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
