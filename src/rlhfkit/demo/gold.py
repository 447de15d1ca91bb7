"""The gold judge of the default task: VADER sentiment, weighted by how much of the response is a coherent review.

    gold(prompt, response) = coherence * sentiment - (1 - coherence)
    sentiment(response)    = clip(compound - 1.5 * repeat_share, -1, 1)      (the whole judge before 2026-12-01)

`compound` is VADER's normalised sentiment of the response in [-1, 1] (vaderSentiment, Hutto & Gilbert 2014;
nobody here wrote it). `repeat_share` is the share of word trigrams that repeat an earlier trigram (0 for fewer
than two trigrams; lower-cased, punctuation stripped). `coherence` in [0, 1] is the share of the response's words
that lie in sentences a review of the task could contain. Each sentence (split after '.', '!' or '?') is parsed
against the corpus generator's own grammar (`corpus.py`: its templates, aspects, adjectives, connectors and
verdicts, case ignored). A sentence's words count in full when

- it is an aspect sentence: an optional connector, then one template with its slots filled from the lists, the
  adjectives of one polarity, `was`/`were` agreeing with the aspect, a connector of the same polarity; it comes
  before any verdict, its aspect belongs to the prompt's topic (any topic's when the prompt is not one of the
  task's openings), and no earlier sentence judged the same aspect (the generator never does);
- or it is the first verdict, it is the last sentence, and it agrees with the sign of the sum of the aspect
  sentences' polarities (the generator's rule: a positive body ends "Highly recommended!").

A sentence of the grammar out of place (a repeated aspect, an aspect of another topic, a verdict mid-way or
against the body, anything after a verdict) counts `OUT_OF_PLACE` = half; an exact repeat of an earlier sentence,
an ungrammatical sentence and one cut off at the token limit count nothing. So gold runs from the sentiment score
(every word coherent) down to -1 (none): a fluent review in the task's language scores exactly its old score, a new
one too (the parse knows the grammar, not the corpus's sentences), while word salad glued from corpus fragments,
a stutter or a verdict loop is pulled toward -1 in proportion to its words, however positive they are. An empty
response scores -1. The grammar's tables are built once per process from `corpus.py` (milliseconds); parses and
VADER scores are cached. Nothing trains on this judge directly: the simulated panel labels pairs from it, with
noise and biases.

A second objective, `brevity` (gold spec `default:brevity`; `default` is also `default:quality`), wants the
opposite of an enthusiastic review: the shortest answer that stays a coherent review of the prompt's topic,

    brevity(prompt, response) = coherence * (1 - 2 * min(1, words / BREVITY_WORDS)) - (1 - coherence)

so one on-topic sentence scores near 1, a review of BREVITY_WORDS words or more -1, and word salad -1 however short
(the coherence weighting keeps "be short" from rewarding an empty or broken answer; an empty response scores -1).
Quality rises with more enthusiastic aspect sentences (VADER's compound grows with every positive word) and
brevity falls with every word: on the default SFT model's samples the two are uncorrelated, and pushing one costs
the other (docs/reward-models.md, "Heads per objective", has the figures).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from . import corpus

REPEAT_WEIGHT = 1.5
BREVITY_WORDS = 40  # a response of this many words or more scores -1 on brevity
OUT_OF_PLACE = 0.5  # credit for a sentence of the grammar in the wrong place (a repeated aspect, a verdict mid-way)
_WORD = re.compile(r"[a-z']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
POLARITY = {"positive": 1, "negative": -1, "neutral": 0}


@dataclass(frozen=True)
class Parse:
    """A sentence of the grammar: an aspect sentence (`aspect` set) or a verdict (`aspect` None)."""

    polarity: int
    aspect: str | None = None


@dataclass(frozen=True)
class _Grammar:
    templates: list[tuple[re.Pattern, int]]  # (anchored pattern with aspect/was/adj/adj2 groups, polarity)
    adjectives: dict[str, int]  # adjective -> its polarity
    connectors: dict[str, frozenset[int]]  # "luckily, " -> polarities it may introduce
    verdicts: dict[str, int]
    topics: dict[str, frozenset[str]]  # opening -> its topic's aspects
    all_aspects: frozenset[str]


def _template_pattern(template: str, aspects: str, adjectives: str) -> re.Pattern:
    pattern = re.escape(template.lower())
    slots = {
        r"\{a\}": f"(?P<aspect>{aspects})",
        r"\{was\}": "(?P<was>was|were)",
        r"\{adj\}": f"(?P<adj>{adjectives})",
        r"\{adj2\}": f"(?P<adj2>{adjectives})",
    }
    for slot, group in slots.items():
        pattern = pattern.replace(slot, group, 1)
    return re.compile(pattern + r"\Z")


@lru_cache(maxsize=1)
def grammar() -> _Grammar:
    """The corpus generator's sentence grammar as lookup tables, built once per process."""
    all_aspects = frozenset(a for _, aspects in corpus.TOPICS.values() for a in aspects)
    aspects = "|".join(re.escape(a) for a in sorted(all_aspects, key=len, reverse=True))
    lists = {"positive": corpus.POSITIVE, "negative": corpus.NEGATIVE, "neutral": corpus.NEUTRAL}
    adjectives = {w: POLARITY[p] for p, words in lists.items() for w in words}
    any_adjective = "|".join(sorted(adjectives, key=len, reverse=True))
    templates = []
    for mood, group in (
        ("positive", corpus.POS_TEMPLATES),
        ("negative", corpus.NEG_TEMPLATES),
        ("neutral", corpus.NEU_TEMPLATES),
    ):
        for template in group:
            templates.append((_template_pattern(template, aspects, any_adjective), POLARITY[mood]))
    connectors: dict[str, set[int]] = {}
    for polarity, group in ((1, corpus.CONNECT_POS), (-1, corpus.CONNECT_NEG)):
        for connector in filter(None, group):
            connectors.setdefault(connector.lower() + " ", set()).add(polarity)
    verdicts = {
        v.lower(): p
        for p, group in ((1, corpus.CLOSE_POS), (-1, corpus.CLOSE_NEG), (0, corpus.CLOSE_NEU))
        for v in group
    }
    topics = {opening: frozenset(corpus.TOPICS[topic][1]) for topic, opening in corpus.all_openings()}
    return _Grammar(
        templates, adjectives, {c: frozenset(p) for c, p in connectors.items()}, verdicts, topics, all_aspects
    )


@lru_cache(maxsize=200_000)
def parse_sentence(sentence: str) -> Parse | None:
    """The sentence's parse under the corpus grammar (case and surrounding space ignored), or None."""
    g = grammar()
    text = " ".join(sentence.lower().split())
    if text in g.verdicts:
        return Parse(g.verdicts[text])
    allowed = None  # polarities the connector may introduce; None without a connector
    for connector, polarities in g.connectors.items():
        if text.startswith(connector):
            text, allowed = text[len(connector) :], polarities
            break
    for pattern, mood in g.templates:
        match = pattern.match(text)
        if match is None:
            continue
        slots = match.groupdict()
        aspect = slots["aspect"]
        plural = aspect.endswith("s") and not aspect.endswith("ss")
        if slots.get("was") and slots["was"] != ("were" if plural else "was"):
            continue
        polarity = mood
        if slots.get("adj"):
            polarity = g.adjectives[slots["adj"]]
            # a shared template ("{A} {was} {adj}.") appears under each mood: the adjectives pick the mood
            if polarity != mood:
                continue
            if slots.get("adj2") and (slots["adj2"] == slots["adj"] or g.adjectives[slots["adj2"]] != polarity):
                continue
        if allowed is not None and polarity not in allowed:
            continue
        return Parse(polarity, aspect)
    return None


def sentences(text: str) -> list[str]:
    """The response split after each '.', '!' or '?' followed by space; a trailing fragment is a sentence too."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def coherence(response: str, prompt: str = "") -> float:
    """Share of the response's words in sentences of the grammar, those out of place counting half."""
    g = grammar()
    aspects = g.topics.get(" ".join(prompt.split()), g.all_aspects)
    seen_aspects: set[str] = set()
    seen_sentences: set[str] = set()
    polarity_sum, good, total, ended = 0, 0.0, 0, False
    parts = sentences(response)
    for i, sentence in enumerate(parts):
        words = len(_WORD.findall(sentence.lower()))
        total += words
        key = " ".join(sentence.lower().split())
        parse = parse_sentence(sentence)
        if parse is None or key in seen_sentences:  # not a sentence of the task, or a loop
            continue
        seen_sentences.add(key)
        if parse.aspect is None:  # a verdict: the last sentence, after none, agreeing with the body
            in_place = not ended and i == len(parts) - 1 and parse.polarity == (polarity_sum > 0) - (polarity_sum < 0)
            ended = True
        else:  # an aspect sentence: before any verdict, on the prompt's topic, its aspect judged once
            in_place = not ended and parse.aspect in aspects and parse.aspect not in seen_aspects
            seen_aspects.add(parse.aspect)
            polarity_sum += parse.polarity
        good += words if in_place else OUT_OF_PLACE * words
    return good / total if total else 0.0


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=100_000)
def compound(text: str) -> float:
    """VADER's compound sentiment in [-1, 1] (cached: it is most of the judge's time, and samples repeat)."""
    return _analyzer().polarity_scores(text)["compound"]


def repeat_share(text: str) -> float:
    """Share of word trigrams that already occurred earlier in the text."""
    words = _WORD.findall(text.lower())
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(trigrams) < 2:
        return 0.0
    return 1.0 - len(set(trigrams)) / len(trigrams)


def sentiment_score(response: str) -> float:
    """The judge before coherence: VADER compound minus the trigram-repeat penalty, clipped to [-1, 1]."""
    if not response.strip():
        return -1.0
    return max(-1.0, min(1.0, compound(response) - REPEAT_WEIGHT * repeat_share(response)))


def gold_score(response: str, prompt: str = "") -> float:
    if not response.strip():
        return -1.0
    c = coherence(response, prompt)
    return max(-1.0, min(1.0, c * sentiment_score(response) - (1.0 - c)))


def score(prompts: list[str], responses: list[str]) -> list[float]:
    """Gold-judge callable `f(prompts, responses) -> scores`; the prompt names the topic whose aspects count."""
    return [gold_score(r, p) for p, r in zip(prompts, responses, strict=True)]


def brevity_score(response: str, prompt: str = "") -> float:
    """The brevity objective of one response: short and coherent on the prompt's topic scores high."""
    words = len(_WORD.findall(response.lower()))
    if not words:
        return -1.0
    c = coherence(response, prompt)
    return c * (1.0 - 2.0 * min(1.0, words / BREVITY_WORDS)) - (1.0 - c)


def brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """Gold-judge callable of the second objective (`default:brevity`), in conflict with `score` (quality)."""
    return [brevity_score(r, p) for p, r in zip(prompts, responses, strict=True)]
