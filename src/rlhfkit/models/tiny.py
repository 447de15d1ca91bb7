"""Tiny randomly initialised models of real architectures, for testing every stage against each one.

Each is built from the architecture's own transformers config class (2 layers, hidden size 32, 4 heads) and
saved with `save_pretrained`, next to the embedded default's tokenizer (so the vocabulary is that tokenizer's),
into a plain HF directory that every stage loads like any other model. The chat families' tokenizers (CHAT_ARCHS) get
the real template their models ship (ChatML for Qwen and SmolLM3, Llama-3's, Gemma's) with its special tokens, so
conversations go through `apply_chat_template` there and through the transcript fallback elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError

ARCHS = (
    "llama",
    "qwen2",
    "mistral",
    "gpt2",
    "gpt_neox",
    "opt",
    "phi",
    "gemma",
    "qwen3",
    "olmo2",
    "granite",
    "gemma2",
    "gemma3_text",
    "phi3",
    "smollm3",
)
# The families users bring now: run on the four main stages in the matrix (not every stage and mode).
NEW_ARCHS = ("qwen3", "olmo2", "granite", "gemma2", "gemma3_text", "phi3", "smollm3")

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, POSITIONS = 32, 2, 4, 2, 64, 256

# The chat templates as the models ship them (tokenizer_config.json), with the special tokens each needs and the
# token that ends an assistant turn (the tokenizer's EOS here, so that sampling stops where a turn ends).
# ChatML, as Qwen2-Instruct ships it: a default system turn when the conversation has none.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Meta-Llama-3-Instruct: role headers, trimmed content, <|eot_id|> after every turn.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# Gemma 3 (instruction-tuned): the system prompt goes into the first user turn, the assistant is "model", roles must
# alternate.
GEMMA_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


@dataclass(frozen=True)
class ChatFormat:
    template: str
    special_tokens: tuple[str, ...]
    end_of_turn: str  # set as the tokenizer's EOS
    bos: str | None = None


CHAT_FORMATS = {
    "chatml": ChatFormat(CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "llama3": ChatFormat(
        LLAMA3_TEMPLATE,
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|eot_id|>",
        bos="<|begin_of_text|>",
    ),
    "gemma": ChatFormat(GEMMA_TEMPLATE, ("<bos>", "<start_of_turn>", "<end_of_turn>"), "<end_of_turn>", bos="<bos>"),
}
# The template each family ships; the other architectures are base models with none (the transcript fallback).
ARCH_CHAT = {
    "llama": "llama3",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "smollm3": "chatml",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
}
CHAT_ARCHS = tuple(ARCH_CHAT)


def add_chat_format(tokenizer, name: str):
    """Give `tokenizer` the chat template `name` of CHAT_FORMATS, its special tokens, BOS and end-of-turn EOS."""
    if name not in CHAT_FORMATS:
        raise ModelError(f"chat format '{name}': unknown; choose one of {', '.join(CHAT_FORMATS)}")
    chat = CHAT_FORMATS[name]
    tokenizer.add_special_tokens({"additional_special_tokens": list(chat.special_tokens)})
    tokenizer.chat_template = chat.template
    tokenizer.eos_token = chat.end_of_turn
    if chat.bos is not None:
        tokenizer.bos_token = chat.bos
    return tokenizer


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
    head_dim = HIDDEN // HEADS
    if arch == "gemma":
        # Gemma's head_dim defaults to 256 whatever the hidden size; set it to match.
        return tf.GemmaConfig(**llama_like, head_dim=head_dim)
    if arch == "qwen3":
        return tf.Qwen3Config(**llama_like, head_dim=head_dim)
    if arch == "olmo2":
        return tf.Olmo2Config(**llama_like)
    if arch == "granite":
        return tf.GraniteConfig(**llama_like)
    if arch == "gemma2":
        return tf.Gemma2Config(**llama_like, head_dim=head_dim, query_pre_attn_scalar=head_dim)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(**llama_like, head_dim=head_dim, query_pre_attn_scalar=head_dim)
    if arch == "phi3":
        return tf.Phi3Config(**llama_like, original_max_position_embeddings=POSITIONS)
    if arch == "smollm3":
        return tf.SmolLM3Config(**llama_like)
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
    if arch in ARCH_CHAT:
        add_chat_format(tokenizer, ARCH_CHAT[arch])
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
