"""Which tokens drive a reward model's score: integrated gradients over the input embeddings (Sundararajan et al. 2017).

IG attributes score(x) - score(x') to the tokens along the straight path from a baseline x' to the input x in
embedding space: a_t = sum over the embedding dim of (x_t - x'_t) * mean over alpha of d score / d e_t at
x' + alpha (x - x'). Completeness: sum_t a_t = score(x) - score(x'), up to the error of the path integral.
The path runs through captum's LayerIntegratedGradients on `model.get_input_embeddings()`; the model itself is
called with the real token ids, so position embeddings, the attention mask and where the head reads the sequence
(the last non-pad token of a causal LM, [CLS] of an encoder) are those of the input at every point of the path.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..console import progress_bar
from ..data.records import PreferencePair
from ..scoring import RewardEncoder


@dataclass
class TokenAttributions:
    ids: list[int]
    values: list[float]  # one per token; zero where the baseline keeps the token
    score: float  # score(input)
    baseline_score: float  # score(baseline): the same call with the baseline's embeddings

    @property
    def completeness_error(self) -> float:
        """|sum of attributions - (score - baseline score)|: how well `steps` approximated the path integral."""
        return abs(sum(self.values) - (self.score - self.baseline_score))


def baseline_ids(
    tokenizer, input_ids: Sequence[int], baseline: str | int = "pad", positions: Sequence[int] | None = None
) -> list[int]:
    """The input with each token at `positions` (default: every non-special token) replaced by the baseline token.

    'pad' is the tokenizer's pad token; an int is any token id (e.g. an encoder's [MASK]). Special tokens
    ([CLS], [SEP], EOS) are kept, as in captum's BERT tutorial, so the difference is about the text alone.
    """
    token = tokenizer.pad_token_id if baseline == "pad" else baseline
    if not isinstance(token, int):
        raise ValueError(f"baseline {baseline!r}: expected 'pad' or a token id")
    special = set(tokenizer.all_special_ids)
    where = range(len(input_ids)) if positions is None else positions
    out = list(input_ids)
    for i in where:
        if out[i] not in special:
            out[i] = token
    return out


@contextmanager
def _replaced_output(layer: torch.nn.Module, value: torch.Tensor):
    handle = layer.register_forward_hook(lambda module, inputs, output: value)
    try:
        yield
    finally:
        handle.remove()


def integrated_gradients(
    model,
    tokenizer,
    input_ids: Sequence[int],
    steps: int = 32,
    baseline: str | int = "pad",
    positions: Sequence[int] | None = None,
    head: int = 0,
) -> TokenAttributions:
    """Per-token IG attributions of one head of an HF sequence-classification model for one unpadded sequence.

    `positions`: the tokens the baseline replaces (default: every non-special token); the others keep their
    embedding on the whole path, so their attribution is exactly 0 (e.g. pass the response positions to attribute
    a reward to the response with the prompt held fixed).
    """
    from captum.attr import LayerIntegratedGradients

    was_training = model.training
    model.eval()
    ids = torch.tensor([list(input_ids)], dtype=torch.long)
    base = torch.tensor([baseline_ids(tokenizer, input_ids, baseline, positions)], dtype=torch.long)
    embeddings = model.get_input_embeddings()

    def score(batch_ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch_ids, attention_mask=torch.ones_like(batch_ids)).logits[:, head]

    try:
        with torch.enable_grad():
            lig = LayerIntegratedGradients(score, embeddings)
            attributions = lig.attribute(ids, baselines=base, n_steps=steps, internal_batch_size=steps)
        with torch.no_grad():
            input_score = score(ids).item()
            # The path's start point: the input's ids (same positions, mask and read-out) with the baseline's
            # embeddings.
            with _replaced_output(embeddings, embeddings(base)):
                start_score = score(ids).item()
    finally:
        model.train(was_training)
    return TokenAttributions(
        ids=list(input_ids), values=attributions.sum(-1)[0].tolist(), score=input_score, baseline_score=start_score
    )


def _continues_word(token: str, wordpiece: bool) -> bool:
    """Whether a sub-word token continues the previous word: WordPiece marks continuations (##), byte-level BPE and
    SentencePiece mark word starts (Ġ, ▁)."""
    return token.startswith("##") if wordpiece else not token.startswith(("Ġ", "▁", " "))


def word_attributions(tokenizer, input_ids: Sequence[int], values: Sequence[float]) -> list[tuple[str, float]]:
    """Merge sub-word tokens into whitespace-separated words, summing their attributions; special tokens and
    whitespace-only tokens (newlines) end a word and are left out."""
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    wordpiece = type(backend).__name__ == "WordPiece"
    special = set(tokenizer.all_special_ids)
    words: list[tuple[list[str], float]] = []
    open_word = False
    for token_id, token, value in zip(input_ids, tokenizer.convert_ids_to_tokens(list(input_ids)), values):
        if token_id in special or not tokenizer.convert_tokens_to_string([token]).strip():
            open_word = False
            continue
        if open_word and _continues_word(token, wordpiece):
            pieces, total = words[-1]
            words[-1] = (pieces + [token], total + value)
        else:
            words.append(([token], value))
        open_word = True
    return [(tokenizer.convert_tokens_to_string(pieces).strip(), total) for pieces, total in words]


def normalise_word(word: str) -> str:
    """Lower case without surrounding punctuation ('Wonderful,' -> 'wonderful'); punctuation alone stays as it is."""
    return word.strip(string.punctuation + "“”‘’").lower() or word


def top_words(attributed: list[list[tuple[str, float]]], k: int = 10) -> dict[str, list[list]]:
    """Words by mean attribution over every occurrence: the k most positive and the k most negative, as [word,
    mean, count]."""
    totals: dict[str, list[float]] = {}
    for words in attributed:
        for word, value in words:
            totals.setdefault(normalise_word(word), []).append(value)
    means = sorted(([w, sum(v) / len(v), len(v)] for w, v in totals.items()), key=lambda row: row[1])
    return {
        "positive": [row for row in reversed(means) if row[1] > 0][:k],
        "negative": [row for row in means if row[1] < 0][:k],
    }


def response_positions(encoder: RewardEncoder, prompt, input_ids: list[int]) -> range:
    """Token positions of the response (and its closing special token) in a sequence built by `encoder`."""
    prompt_ids, _ = encoder.encoder.prompt_ids(prompt)
    # join with an empty response: the prompt part, plus the closing [SEP] in the encoder layout.
    start = len(encoder.join(prompt_ids, [])) - (1 if encoder.pair_style else 0)
    return range(start, len(input_ids))


def attribute_pairs(
    model, tokenizer, encoder: RewardEncoder, pairs: list[PreferencePair], encoded: list, steps: int
) -> tuple[list[dict], dict, float]:
    """Word attributions of each pair's chosen and rejected response (the prompt held fixed in the baseline); the words
    with the highest and lowest mean attribution over all of them; the largest completeness error."""
    rows, attributed, worst = [], [], 0.0
    with progress_bar("attributions", len(pairs)) as advance:
        for pair, sequences in zip(pairs, encoded):
            row: dict = {"id": pair.id, "prompt": pair.prompt}
            for side, ids in zip(("chosen", "rejected"), sequences):
                span = response_positions(encoder, pair.prompt, ids)
                result = integrated_gradients(model, tokenizer, ids, steps=steps, positions=span)
                words = word_attributions(tokenizer, ids[span.start :], result.values[span.start :])
                attributed.append(words)
                worst = max(worst, result.completeness_error)
                row[side] = [[word, round(value, 5)] for word, value in words]
                row[f"reward_{side}"] = round(result.score, 5)
            rows.append(row)
            advance()
    return rows, top_words(attributed), worst
