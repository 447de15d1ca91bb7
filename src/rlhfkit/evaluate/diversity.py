"""Diversity of a set of responses: distinct-n, expectation-adjusted distinct-n (EAD), self-BLEU and the stock phrase
(the word n-gram the most responses contain).

A text is either a string, split on whitespace, or a sequence of tokens (e.g. token ids); n-grams never cross
from one text into the next.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

Text = str | Sequence
STOCK_PHRASE_N = 3  # word trigrams: "best of all", "on top of", "i will come"
_WORD = re.compile(r"[a-z0-9']+")


def _tokens(text: Text) -> list:
    return text.split() if isinstance(text, str) else list(text)


def _ngrams(texts: Sequence[Text], n: int) -> list[tuple]:
    grams = []
    for text in texts:
        tokens = _tokens(text)
        grams += [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return grams


def distinct_n(texts: Sequence[Text], n: int = 2) -> float:
    """Unique n-grams divided by all n-grams, pooled across the texts (0 when there are none)."""
    grams = _ngrams(texts, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def expected_distinct(total: int, vocab_size: int) -> float:
    """Expected number of distinct types among `total` draws from a uniform distribution over `vocab_size` types:
    V * (1 - ((V-1)/V)^C)."""
    return vocab_size * (1.0 - ((vocab_size - 1) / vocab_size) ** total)


def ead_n(texts: Sequence[Text], n: int, vocab_size: int) -> float:
    """Expectation-adjusted distinct n-grams (Liu et al. 2022, "Rethinking and Refining the Distinct Metric"):

        EAD = N / (V * (1 - ((V-1)/V)^C))

    with N the unique n-grams and C all n-grams, pooled across the texts, and V = `vocab_size`, the vocabulary
    size, for every n. The paper defines V as the vocabulary size, and its example implementation (like Kirkman et
    al. 2024, who report EAD of RLHF policies) passes the same vocabulary size for every n. We keep that convention:
    the n-gram space V**n would make the expectation ~C for any realistic C, and EAD would collapse to distinct-n.
    Unlike distinct-n, EAD does not fall just because the texts are longer; it can exceed 1 once C approaches V.
    0 when there are no n-grams.
    """
    if vocab_size < 1:
        raise ValueError(f"ead_n: vocab_size must be positive, got {vocab_size}")
    grams = _ngrams(texts, n)
    return len(set(grams)) / expected_distinct(len(grams), vocab_size) if grams else 0.0


def self_bleu(texts: Sequence[str], max_texts: int | None = None) -> float:
    """Mean over texts of sacrebleu's sentence BLEU of each text against all the others as references.

    On sacrebleu's 0-100 scale, with its sentence_bleu defaults (13a tokenisation, exponential smoothing, effective
    order). Higher means more alike: 100 for identical texts, near 0 for texts that share no n-grams. Only the first
    `max_texts` texts are used when given, because the cost grows with the square of the count. 0 for fewer than
    two texts.
    """
    from sacrebleu import sentence_bleu

    texts = list(texts)[:max_texts] if max_texts is not None else list(texts)
    if len(texts) < 2:
        return 0.0
    scores = [sentence_bleu(text, texts[:i] + texts[i + 1 :]).score for i, text in enumerate(texts)]
    return sum(scores) / len(scores)


def stock_phrase(texts: Sequence[str], n: int = STOCK_PHRASE_N) -> tuple[str, float]:
    """The word n-gram that the most texts contain, and the share of texts that contain it (counted once per text;
    lower-cased, punctuation dropped; ("", 0.0) when no text has n words).

    A policy that opens most answers with one stock phrase ("Best of all, ...") raises this share while distinct-n,
    pooled over every n-gram of the texts, barely moves. On the default task the SFT model's top trigram ("on top
    of") is in 24% of its responses; a DPO model that learned "best of all" had it in 52%.
    """
    counts: Counter = Counter()
    for text in texts:
        words = _WORD.findall(text.lower())
        counts.update({tuple(words[i : i + n]) for i in range(len(words) - n + 1)})
    if not counts:
        return "", 0.0
    # most texts first, then the alphabetically first n-gram, so ties do not depend on the order of the texts
    gram, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    return " ".join(gram), count / len(texts)
