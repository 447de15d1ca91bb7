"""Scoring responses: callables named as `module:function` with the signature f(prompts, responses) -> list[float],
and reward models (an HF sequence-classification directory, one scalar head per objective) with one input layout
(`RewardEncoder`), one padding-free forward (`score_sequences`) and one truncation rule (`RewardModelScorer`) for
every caller: reward training and evaluation, online rewards, policy evaluation and the reward-model judge.

A reward-model ensemble (`rlhfkit reward train ensemble=K`) is a directory holding `ensemble.json` and one reward-model
directory per member (or, `ensemble_form=shared_backbone`, one model whose K heads on a frozen backbone are the
members: `SharedHead`); it is read wherever a reward model is (`load_reward_models`, `RewardModelScorer`), and the
reader's `ensemble_method` / `ensemble_coef` combine the members' rewards (rlhfkit.losses.ensemble_reward)."""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from .data.records import PreferencePair
from .data.tokenize import Encoder
from .errors import ConfigError, ModelError
from .forward import decoder_parts, packed_hidden
from .losses import ensemble_reward

Scorer = Callable[[list[str], list[str]], list[float]]
DEFAULT_GOLD = "rlhfkit.demo.gold:score"
# the default task's objectives, each with its own gold judge: `default` is `default:quality`
DEFAULT_OBJECTIVES = {"quality": DEFAULT_GOLD, "brevity": "rlhfkit.demo.gold:brevity"}


def load_scorer(spec: str, option: str = "gold") -> Scorer:
    """Import `module:function`; 'default' is the review task's gold judge, 'default:NAME' the gold of its objective
    NAME (quality, brevity)."""
    if spec == "default":
        spec = DEFAULT_GOLD
    elif spec.startswith("default:"):
        name = spec.partition(":")[2]
        if name not in DEFAULT_OBJECTIVES:
            raise ConfigError(
                f"{option}: '{spec}': the default task has no objective '{name}' (it has "
                f"{', '.join(DEFAULT_OBJECTIVES)})"
            )
        spec = DEFAULT_OBJECTIVES[name]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{option}: '{spec}' is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{option}: cannot import module '{module_name}' ({exc})") from None
    scorer = getattr(module, attr, None)
    if not callable(scorer):
        raise ConfigError(f"{option}: module '{module_name}' has no function '{attr}'")
    return scorer


def word_count(prompts: list[str], responses: list[str]) -> list[float]:
    """A length reward: each response's number of words. With a small weight next to a reward model
    (`{function: rlhfkit.scoring:word_count, weight: 0.05}`) it makes the length-biased proxy that over-optimises
    under best-of-n in the demo: gold peaks at n = 8 and falls after it."""
    return [float(len(response.split())) for response in responses]


def call_scorer(scorer: Scorer, prompts: list[str], responses: list[str], option: str = "gold") -> list[float]:
    scores = list(scorer(prompts, responses))
    if len(scores) != len(responses):
        raise ConfigError(f"{option}: the scorer returned {len(scores)} scores for {len(responses)} responses")
    return [float(s) for s in scores]


class RewardEncoder:
    """prompt + response -> model inputs; encoders get their [CLS]/[SEP] pair layout, causal LMs an EOS."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int):
        self.tokenizer = tokenizer
        self.pair_style = tokenizer.cls_token is not None
        special = tokenizer.num_special_tokens_to_add(pair=True) if self.pair_style else 0
        self.encoder = Encoder(tokenizer, max_length - special, max_prompt_length, add_eos=not self.pair_style)

    def encode_pair(self, pair: PreferencePair) -> tuple[list[int], list[int]] | None:
        """(chosen, rejected) ids, or None when the truncation rule drops the pair (named by its id, if it has one)."""
        place = None if pair.id is None else f"id {pair.id!r}"
        out = self.encoder.encode(pair.prompt, [pair.chosen, pair.rejected], place)
        if out is None:
            return None
        prompt_ids, (chosen_ids, rejected_ids) = out
        return self.join(prompt_ids, chosen_ids), self.join(prompt_ids, rejected_ids)

    def encode_response(self, prompt, response: str) -> list[int] | None:
        out = self.encoder.encode(prompt, [response])
        return None if out is None else self.join(out[0], out[1][0])

    def join(self, prompt_ids: list[int], response_ids: list[int]) -> list[int]:
        if self.pair_style:
            # Encoder pair layout: [CLS] prompt [SEP] response [SEP] (RoBERTa-style tokenizers double the middle
            # separator).
            cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
            middle = [sep, sep] if self.tokenizer.num_special_tokens_to_add(pair=True) >= 4 else [sep]
            return [cls] + prompt_ids + middle + response_ids + [sep]
        return prompt_ids + response_ids


def head_scores(model, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Rewards of every head for token sequences, shape [n, heads]: padding-free where decoder_parts allows (the score
    head reads each sequence's last hidden state), else one right-padded batch through the whole model."""
    if isinstance(model, SharedHead):
        return model.scores(sequences, pad_id)
    parts = decoder_parts(model, head="score")
    if parts is not None:
        backbone, score = parts
        hidden, starts = packed_hidden(backbone, sequences, pad_id)
        # the last token that is not padding, as the HF heads pick it (a tokenizer whose pad is its EOS scores before
        # the EOS)
        ends = [next((j for j in range(len(s) - 1, -1, -1) if s[j] != pad_id), 0) for s in sequences]
        last = torch.tensor([start + end for start, end in zip(starts, ends)], device=hidden.device)
        return score(hidden[last]).float()
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()


def score_sequences(model, sequences: list[list[int]], pad_id: int, head: int = 0) -> torch.Tensor:
    """Rewards of one head for token sequences, shape [n] (head_scores, one column)."""
    return head_scores(model, sequences, pad_id)[:, head]


def pair_rewards(model, batch: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected rewards from one concatenated forward pass."""
    rewards = score_sequences(model, [c for c, _ in batch] + [r for _, r in batch], pad_id)
    return rewards[: len(batch)], rewards[len(batch) :]


def pair_head_rewards(
    model, batch: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """pair_rewards for every head: chosen and rejected rewards, each [batch, heads], from one forward pass."""
    rewards = head_scores(model, [c for c, _ in batch] + [r for _, r in batch], pad_id)
    return rewards[: len(batch)], rewards[len(batch) :]


def objectives_of(model_config) -> list[str]:
    """The objective each head of a reward model scores, in head order: the names `reward train` stores in the
    saved config's id2label (a model trained on per-objective `labels`), else transformers' LABEL_0, LABEL_1, ..."""
    names = getattr(model_config, "id2label", None) or {}
    return [str(names.get(i, f"LABEL_{i}")) for i in range(model_config.num_labels)]


def head_index(model_config, head: int | str, option: str, path: str | Path = "the reward model") -> int:
    """A head named by index or by objective name (`head: brevity`), as its index; a ConfigError names the
    option and the model's heads when there is no such head."""
    objectives = objectives_of(model_config)
    known = ", ".join(f"{i}: {name}" for i, name in enumerate(objectives))
    if isinstance(head, str) and not head.isdigit():
        if head not in objectives:
            raise ConfigError(f"{option}={head}: the reward model {path} has no head of that name (heads: {known})")
        return objectives.index(head)
    index = int(head)
    if not 0 <= index < len(objectives):
        raise ConfigError(f"{option}={head}: the reward model {path} has {len(objectives)} head(s) ({known})")
    return index


@torch.no_grad()
def margins_of(
    model, encoded: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int
) -> tuple[list[float], list[float], list[float]]:
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(encoded), batch_size):
        c, r = pair_rewards(model, encoded[i : i + batch_size], pad_id)
        chosen += c.tolist()
        rejected += r.tolist()
    model.train(was_training)
    return [c - r for c, r in zip(chosen, rejected)], chosen, rejected


def ensemble_margins(
    models: list, encoded: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int, method="mean", coef=0.0
) -> tuple[list[float], list[float], list[float], list[tuple[list[float], list[float]]]]:
    """margins_of for one model or an ensemble: (margins, chosen, rejected) of the combined rewards, and each
    member's (chosen, rejected) rewards."""
    members = [margins_of(model, encoded, pad_id, batch_size)[1:] for model in models]
    chosen = combine_rewards([c for c, _ in members], method, coef)
    rejected = combine_rewards([r for _, r in members], method, coef)
    return [c - r for c, r in zip(chosen, rejected)], chosen, rejected, members


@torch.no_grad()
def head_rewards_of(
    model, encoded: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """margins_of for every head: the chosen and the rejected rewards, each [pairs, heads]."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(encoded), batch_size):
        c, r = pair_head_rewards(model, encoded[i : i + batch_size], pad_id)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def encode_pairs(pairs: list[PreferencePair], encoder: RewardEncoder) -> tuple[list, list[PreferencePair]]:
    encoded, kept = [], []
    for pair in pairs:
        out = encoder.encode_pair(pair)
        if out is not None:
            encoded.append(out)
            kept.append(pair)
    return encoded, kept


# Scoring budget of a reward model outside its training run (online rewards, eval, the reward-model judge), in
# tokens of prompt + response and of the prompt alone; capped by the model's context.
SCORING_MAX_LENGTH = 1024
SCORING_MAX_PROMPT_LENGTH = 512


ENSEMBLE_FILE = "ensemble.json"
SHARED_BACKBONE = "shared_backbone"  # the cheap form: one frozen backbone, one head per member, in one folder


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def ensemble_manifest(path: str | Path) -> dict:
    """The ensemble.json of an ensemble directory, checked: {members: [names], form?: separate|shared_backbone}."""
    manifest_path = Path(path) / ENSEMBLE_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        names = manifest["members"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TypeError("members must be a list of names")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(
            f"{manifest_path}: not a reward-model ensemble manifest ({exc}); expected {{members: [...]}}"
        ) from None
    return manifest


def is_shared_backbone(path: str | Path) -> bool:
    return is_ensemble(path) and ensemble_manifest(path).get("form") == SHARED_BACKBONE


def ensemble_members(path: str | Path) -> list[Path]:
    """The member directories of a reward-model ensemble, in order; [path] for a single reward model and for a
    shared-backbone ensemble (one folder: one model whose heads are the members)."""
    path = Path(path)
    if not is_ensemble(path):
        return [path]
    manifest_path = path / ENSEMBLE_FILE
    manifest = ensemble_manifest(path)
    if manifest.get("form") == SHARED_BACKBONE:
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{manifest_path}: a shared-backbone ensemble without its model (no config.json beside it); train "
                "it again with `rlhfkit reward train ensemble=K ensemble_form=shared_backbone`"
            )
        return [path]
    members = [path / name for name in manifest["members"]]
    missing = [str(m) for m in members if not (m / "config.json").is_file()]
    if not members or missing:
        raise ModelError(
            f"{manifest_path}: "
            + (f"member(s) {', '.join(missing)} missing" if missing else "no members listed")
            + "; train the ensemble again with `rlhfkit reward train ensemble=K`"
        )
    return members


def load_reward_models(path: str | Path, tokenizer=None) -> tuple[object, list]:
    """(tokenizer, models in eval mode) of a reward-model directory: one model, or each member of an ensemble (the
    members share the first one's tokenizer: `reward train` trains them all on one backbone)."""
    from .models.loading import load_reward_model, load_tokenizer

    members = ensemble_members(path)
    tokenizer = tokenizer or load_tokenizer(members[0])
    if is_shared_backbone(path):
        shared = load_reward_model(path, tokenizer).eval()
        expected = len(ensemble_manifest(path)["members"])
        if shared.config.num_labels != expected:
            raise ModelError(
                f"{path}: ensemble.json lists {expected} members, the model has {shared.config.num_labels} head(s)"
            )
        return tokenizer, [SharedHead(shared, k) for k in range(expected)]
    return tokenizer, [load_reward_model(member, tokenizer).eval() for member in members]


class SharedHead(torch.nn.Module):
    """Member k of a shared-backbone ensemble: head k of one K-head reward model, seen as a one-head reward model
    (its `config` says one head, named "reward"). The members of one model share each backbone forward: the K heads'
    scores of a batch are computed once and each member reads its column."""

    def __init__(self, shared: torch.nn.Module, index: int):
        super().__init__()
        import copy

        self.shared, self.index = shared, index
        self.config = copy.deepcopy(shared.config)
        self.config.num_labels = 1
        self.config.id2label, self.config.label2id = {0: "reward"}, {"reward": 0}

    @torch.no_grad()
    def scores(self, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
        key = (pad_id, tuple(tuple(s) for s in sequences))
        memo = getattr(self.shared, "_rlhfkit_heads_memo", None)
        if memo is None or memo[0] != key:
            memo = (key, head_scores(self.shared, sequences, pad_id))
            self.shared._rlhfkit_heads_memo = memo  # one batch's [n, K] scores: the next batch replaces it
        return memo[1][:, self.index : self.index + 1]


def combine_rewards(member_rewards: list[list[float]], method: str = "mean", coef: float = 0.0) -> list[float]:
    """The ensemble's reward per response from each member's rewards (one member: its rewards, unchanged)."""
    if len(member_rewards) == 1:
        return list(member_rewards[0])
    return ensemble_reward(torch.tensor(member_rewards, dtype=torch.float64), method, coef).tolist()


def preference_disagreement(
    rewards_a: list[list[float]], rewards_b: list[list[float]], measure: str = "std"
) -> list[float]:
    """Each pair's ensemble disagreement from each member's rewards of its two responses ([K][n] each). `std`: the
    population standard deviation over members of the preference probability sigmoid(r_a - r_b), 0 when every
    member gives the same probability, at most 0.5 (half the members sure of a, half sure of b). `sign`: the share of
    members on the minority side of which response is better (0 when all agree, 0.5 at most), plus the std / 1000 to
    order the pairs of one share. NaN where a member scored NaN."""
    margins = torch.tensor(rewards_a, dtype=torch.float64) - torch.tensor(rewards_b, dtype=torch.float64)
    std = torch.sigmoid(margins).std(dim=0, correction=0)
    if measure == "std":
        return std.tolist()
    if measure != "sign":
        raise ValueError(f"unknown disagreement measure {measure!r} (std or sign)")
    prefer_a = (margins > 0).double().mean(dim=0)
    share = torch.minimum(prefer_a, 1 - prefer_a) + std / 1000
    return torch.where(margins.isnan().any(dim=0), torch.nan, share).tolist()


def most_uncertain(disagreement: list[float], budget: int) -> list[int]:
    """The indices of the `budget` pairs of highest disagreement, highest first (ties: the earlier pair; a NaN
    disagreement ranks after every number)."""
    key = [(-d if not math.isnan(d) else math.inf, i) for i, d in enumerate(disagreement)]
    return [i for _, i in sorted(key)[:budget]]


class RewardModelScorer:
    """A reward-model directory loaded once, scoring (prompt, response) texts with one head. Inputs are cut by the
    training rule (prompt from the left, then the response from the right) to `max_length` tokens, capped by the
    model's context; a response with no room left scores NaN. An ensemble directory scores with every member, the
    rewards combined by `ensemble_method` and `ensemble_coef`."""

    def __init__(
        self,
        model: str | Path,
        max_length: int = SCORING_MAX_LENGTH,
        max_prompt_length: int = SCORING_MAX_PROMPT_LENGTH,
        batch_size: int = 64,
        ensemble_method: str = "mean",
        ensemble_coef: float = 0.5,
    ):
        from .resolve import resolve_model_path

        self.path = resolve_model_path(str(model))
        self.tokenizer, self.models = load_reward_models(self.path)
        self.model = self.models[0]
        self.ensemble_method, self.ensemble_coef = ensemble_method, ensemble_coef
        context = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None
        )
        if context:
            max_length = min(max_length, context)
            max_prompt_length = min(max_prompt_length, max_length // 2)
        self.encoder = RewardEncoder(self.tokenizer, max_length, max_prompt_length)
        self.batch_size = batch_size

    @property
    def num_heads(self) -> int:
        return min(m.config.num_labels for m in self.models)

    @property
    def objectives(self) -> list[str]:
        return objectives_of(self.model.config)

    def check_head(self, head: int | str, option: str) -> int:
        """The index of a head named by index or objective name; a ConfigError naming `option` if there is none."""
        return head_index(self.model.config, head, option, self.path)

    @torch.no_grad()
    def head_members(self, prompts: list, responses: list[str], on_batch=None) -> torch.Tensor:
        """Every member's scores from every head in one forward pass per batch, shape [members, responses, heads]
        (NaN for a response with no room left); `on_batch(n)` is told after each batch of n sequences has been
        scored by every member."""
        sequences = [self.encoder.encode_response(p, r) for p, r in zip(prompts, responses)]
        kept = [i for i, s in enumerate(sequences) if s is not None]
        scores = torch.full((len(self.models), len(sequences), self.num_heads), math.nan)
        for start in range(0, len(kept), self.batch_size):
            chunk = kept[start : start + self.batch_size]
            for k, model in enumerate(self.models):
                values = head_scores(model, [sequences[i] for i in chunk], self.tokenizer.pad_token_id)
                scores[k, chunk] = values[:, : self.num_heads].cpu()
            if on_batch is not None:
                on_batch(len(chunk))
        return scores

    def score_members(
        self, prompts: list, responses: list[str], head: int | str = 0, on_batch=None
    ) -> list[list[float]]:
        """Each member's scores from one head (index or objective name; one list per member, one score per
        response); `on_batch` as in head_members."""
        head = self.check_head(head, "head")
        return self.head_members(prompts, responses, on_batch)[:, :, head].tolist()

    def score(self, prompts: list, responses: list[str], head: int | str = 0, on_batch=None) -> list[float]:
        """One score per response from one head (index or objective name; an ensemble's members combined);
        `on_batch` as in score_members."""
        members = self.score_members(prompts, responses, head, on_batch)
        return combine_rewards(members, self.ensemble_method, self.ensemble_coef)


def is_reward_model(path: Path) -> bool:
    from .models.loading import model_info

    path = ensemble_members(path)[0]  # an ensemble is a reward model when its members are
    return any(a.endswith("ForSequenceClassification") for a in model_info(path)["architectures"] or [])


def require_reward_model(path: Path, name: str, hint: str) -> None:
    if not is_reward_model(path):
        raise ModelError(f"model '{name}' is not a reward model (no *ForSequenceClassification head); {hint}")
