"""The default task's gold judge: fluent reviews keep their sentiment score, salad, stutter and loops score low."""

from __future__ import annotations

import random
import statistics
import time

import pytest

from rlhfkit.data.records import read_jsonl
from rlhfkit.demo import corpus, gold
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.resolve import resolve_model_path, resolve_prompts
from rlhfkit.rollout import sample_responses

PROMPT = "I bought this camera for a trip last week."
FLUENT = " The pictures were superb and lovely. Luckily, the video was really great. Highly recommended!"
# Samples of KL-free PPO against a length-loving reward model: docs/online-rl.md's worked example at full size
# (60 steps), then tests/test_hacking_detection.py's run (seed 2, 30 steps). The old judge gave them 0.80-1.00.
SALAD = [
    (
        "I upgraded to this phone last month.",
        " I hated the camera was the camera was honestly fabulous. awful. I was happy with was happy with the battery."
        " really excellent. honestly a was happy with the sound. delightful. really honestly really really impressive.",
    ),
    (
        "I ordered this laptop online last week.",
        " I loved I happy with impressive great good good great great brilliant typical outstanding great really"
        " lovely good money it trackpad happy great outstanding perfect good good and pleasant build keyboard speaker"
        " excellent great keyboard awesome amazing good pleasant back it. superb recommend it it.",
    ),
    (
        "I watched this movie with my family last week.",
        " The characters money money money great and brilliant performance fabulous and perfect nice was fabulous"
        " wonderful and money terrible nice and awesome happy what menu really amazing it We battery average and"
        " enjoyable fantastic worth expected top of that The charger about try it again.",
    ),
    (
        "I stopped at the coffee shop on main street last week.",
        " The tea about money amazing fabulous good perfect awesome fantastic outstanding perfect good good good"
        " excellent good good perfect month honestly excellent delightful outstanding good brilliant lovely great"
        " money great good great fantastic great good and good and great back again.",
    ),
]
STUTTER = (
    PROMPT,
    " The pictures were were superb superb. The the video was great great great. Highly Highly recommended!",
)
VERDICT_LOOP = (
    PROMPT,
    " The video was great. Five stars from me. Five stars from me. Five stars from me. Five stars from me.",
)
SENTENCE_LOOP = (PROMPT, " The video was really great." * 6)
ASPECT_LOOP = (
    PROMPT,
    " Luckily, the video was great. Luckily, the video was superb. Luckily, the video was lovely."
    " Luckily, the video was perfect. Luckily, the video was amazing. Highly recommended!",
)


def test_salad_stutter_and_loops_score_low_though_their_words_are_positive():
    fluent = gold.gold_score(FLUENT, PROMPT)
    assert fluent > 0.8 and fluent == gold.sentiment_score(FLUENT)
    for prompt, response in SALAD:
        assert gold.sentiment_score(response) > 0.8, response  # what the old judge was fooled by
        assert gold.coherence(response, prompt) < 0.1, response
        assert gold.gold_score(response, prompt) < -0.8, response
    for prompt, response in (STUTTER, VERDICT_LOOP, SENTENCE_LOOP, ASPECT_LOOP):
        assert gold.gold_score(response, prompt) < fluent - 0.8, response


def test_fluent_reviews_the_corpus_never_contains_keep_their_sentiment_score():
    # held-out openings and a seed the build never uses (it uses seeds 0-3): none of these reviews is in training
    _, heldout = corpus.split_openings()
    reviews = corpus.generate_reviews(300, heldout, seed=20261201)
    for review in reviews:
        response = " " + review.body
        assert gold.coherence(response, review.opening) == 1.0, response
        assert gold.gold_score(response, review.opening) == gold.sentiment_score(response)
    # a combination no generator seed need produce: five aspects, each in a different template
    novel = (
        " We enjoyed the pictures a lot. Best of all, the video was honestly brilliant. On top of that, I loved the"
        " grip. The battery was pretty ordinary. Sadly, the flash let me down. I would definitely recommend it."
    )
    assert gold.coherence(novel, PROMPT) == 1.0


def test_out_of_place_sentences_count_half():
    # an aspect of another topic, a repeated aspect, a verdict against the body: grammatical, so half credit
    for response in (
        " The pasta was great. Highly recommended!",
        " The video was great. The video was superb. Highly recommended!",
        " The video was terrible. Highly recommended!",
    ):
        assert 0.5 < gold.coherence(response, PROMPT) < 1.0, response
    assert gold.coherence(" The video was great. The pictures were", PROMPT) == pytest.approx(4 / 7)  # cut off
    assert gold.coherence(" The pasta was great.", "some prompt outside the task") == 1.0  # any topic's aspects
    assert gold.parse_sentence("Luckily, the video was terrible.") is None  # connector and adjective disagree
    assert gold.parse_sentence("The pictures was great.") is None  # agreement
    assert gold.parse_sentence("The video was great and great.") is None  # the generator draws two adjectives


def test_sentiment_sign_and_repetition_penalty():
    positive = " The food was wonderful and lovely. The staff was really nice. I would definitely recommend it."
    negative = " The food was awful. The staff was really rude. Never again."  # 'rude' is not in the task's words
    assert gold.gold_score(positive) > 0 > gold.gold_score(negative) >= -1.0
    sentence = " I was happy with the room."
    looped = (
        " I was happy with the room. I was happy with the bed. I was happy with the view. I was happy with the pool."
    )
    assert gold.repeat_share(sentence) == 0.0 and gold.repeat_share(looped) > 0.3
    assert gold.coherence(looped) == 1.0  # grammatical, distinct aspects: only the trigram penalty sees the loop
    assert gold.gold_score(looped) == pytest.approx(
        gold.compound(looped) - gold.REPEAT_WEIGHT * gold.repeat_share(looped)
    )
    assert gold.gold_score(looped) < gold.gold_score(sentence)
    assert gold.repeat_share("one two three") == 0.0  # fewer than two trigrams


def test_empty_and_score_shape():
    assert gold.gold_score("") == -1.0 and gold.gold_score("   ") == -1.0
    responses = [FLUENT, "", SALAD[0][1], " The video was okay."]
    scores = gold.score([PROMPT] * 4, responses)
    assert len(scores) == 4 and all(isinstance(s, float) and -1.0 <= s <= 1.0 for s in scores)
    assert scores == [gold.gold_score(r, PROMPT) for r in responses] and scores[1] == -1.0


def test_on_default_model_samples_new_gold_tracks_the_old_one():
    path = resolve_model_path("default")
    tokenizer, model = load_tokenizer(path, padding_side="left"), load_causal_lm(path)
    prompts = [record["prompt"] for _, record in read_jsonl(resolve_prompts("heldout"))]
    samples = sample_responses(model, tokenizer, (prompts * 3)[:200], max_new_tokens=64, seed=0)
    new = gold.score(samples.prompts, samples.responses)
    old = [gold.sentiment_score(r) for r in samples.responses]
    coherent = [gold.coherence(r, p) for p, r in zip(samples.prompts, samples.responses)]
    fluent = [(o, n) for o, n, c in zip(old, new, coherent) if c >= 0.8]
    assert len(fluent) > 120, len(fluent)  # the base model writes mostly in the task's grammar
    assert statistics.correlation(*zip(*fluent)) >= 0.9
    assert statistics.correlation(old, new) >= 0.9  # measured 0.958 (0.990 on the fluent ones)


def test_ten_thousand_responses_in_a_few_seconds():
    gold.grammar.cache_clear()
    start = time.perf_counter()
    gold.grammar()
    assert time.perf_counter() - start < 1.0
    reviews = corpus.generate_reviews(10_000, corpus.all_openings(), seed=7)
    prompts = [r.opening for r in reviews]
    responses = [" " + r.body for r in reviews]
    rng = random.Random(0)
    for i in range(0, 10_000, 2):  # every other one shuffled into salad
        words = responses[i].split()
        rng.shuffle(words)
        responses[i] = " " + " ".join(words)
    gold.parse_sentence.cache_clear()
    gold.compound.cache_clear()
    start = time.perf_counter()
    scores = gold.score(prompts, responses)
    assert time.perf_counter() - start < 10.0  # measured 2.5 s on a shared 2-core machine, most of it VADER
    assert scores == gold.score(prompts, responses)  # deterministic
