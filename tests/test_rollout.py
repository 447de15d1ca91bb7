"""Sampling engine (rlhfkit.rollout) on the embedded default model: log-probs, masks, EOS handling, seeding,
top-k / top-p filtering, left padding and the truncation warning.

Every reference value is computed here independently: plain forward passes over unpadded sequences, a manual
greedy loop, a hand-made 5-token distribution.
"""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data.tokenize import pad_left
from rlhfkit.forward import token_logps
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.resolve import resolve_model_path
from rlhfkit.rollout import (
    TRUNCATION_WARNING,
    Rollout,
    decode_responses,
    filter_logits,
    generate,
    sample_responses,
    stop_token_ids,
    warn_if_truncated,
)

PROMPTS = [
    "We had dinner at the little Italian place downtown last week.",
    "I bought this phone.",
    "We stayed at the harbor hotel last week and the view from the balcony over the water was the best part of it.",
    "The cafe",
]


@pytest.fixture(scope="module")
def lm():
    path = resolve_model_path("default")
    tokenizer = load_tokenizer(path, padding_side="left")
    model = load_causal_lm(path).eval()
    return model, tokenizer


def prompt_ids(tokenizer, prompts=PROMPTS) -> list[list[int]]:
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def sample(lm, prompts=PROMPTS, seed=0, **kwargs) -> Rollout:
    model, tokenizer = lm
    ids = prompt_ids(tokenizer, prompts)
    batch = pad_left(ids, tokenizer.pad_token_id)
    kwargs.setdefault("max_new_tokens", 20)
    kwargs.setdefault("eos_id", tokenizer.eos_token_id)
    return generate(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        pad_id=tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def unpadded_logps(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / T) of each response token from one forward pass over prompt + response, no padding at
    all."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logits = logits[len(prompt) - 1 : -1] / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


# ----------------------------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.7, 5, 0.9)])
def test_generate_logps_match_a_full_unpadded_forward(lm, temperature, top_k, top_p):
    model, tokenizer = lm
    ids = prompt_ids(tokenizer)
    assert len({len(i) for i in ids}) == len(ids)  # prompts of different lengths: real left padding
    rollout = sample(lm, seed=1, temperature=temperature, top_k=top_k, top_p=top_p)
    assert rollout.logps.shape == rollout.response_ids.shape == rollout.response_mask.shape
    for row, prompt in enumerate(ids):
        mask = rollout.response_mask[row].bool()
        response = rollout.response_ids[row][mask].tolist()
        expected = unpadded_logps(model, prompt, response, temperature)
        # The log-prob is under the tempered distribution *before* top-k/top-p filtering (what the RL losses train).
        torch.testing.assert_close(rollout.logps[row][mask], expected, atol=1e-4, rtol=0)
        assert torch.all(rollout.logps[row][~mask] == 0)
        assert torch.all(rollout.logps[row][mask] < 0)
    if top_k:
        # Every sampled token is one of the top-k of its step under the full forward pass.
        for row, prompt in enumerate(ids):
            response = rollout.response_ids[row][rollout.response_mask[row].bool()].tolist()
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
            top = torch.topk(logits, top_k, -1).indices
            assert all(tok in top[t].tolist() for t, tok in enumerate(response))


def test_left_padding_does_not_change_the_continuation_distribution(lm):
    model, tokenizer = lm
    short, long = prompt_ids(tokenizer, [PROMPTS[1], PROMPTS[2]])
    continuation = tokenizer(" The food was great and the staff were kind.", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    batch = pad_left([short, long], tokenizer.pad_token_id)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # the short prompt really is padded
    cont = torch.tensor([continuation, continuation])
    input_ids = torch.cat([batch["input_ids"], cont], 1)
    attention_mask = torch.cat([batch["attention_mask"], torch.ones_like(cont)], 1)
    with torch.no_grad():
        padded, _ = token_logps(model, input_ids, attention_mask, batch["input_ids"].shape[1])
    for row, prompt in enumerate([short, long]):
        torch.testing.assert_close(padded[row], unpadded_logps(model, prompt, continuation), atol=1e-4, rtol=0)
    # Without position ids that skip the padding the padded row would be different: the check has teeth.
    with torch.no_grad():
        naive = model(input_ids=input_ids, attention_mask=attention_mask).logits[
            0, batch["input_ids"].shape[1] - 1 : -1
        ]
    naive = torch.log_softmax(naive.float(), -1).gather(-1, cont[0][:, None]).squeeze(-1)
    assert (naive - unpadded_logps(model, short, continuation)).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------- EOS, masks, truncation


def check_eos_layout(rollout: Rollout, eos_id: int, pad_id: int) -> None:
    """Mask covers generated tokens up to and including the first EOS; pad after it; truncated == no EOS."""
    width = rollout.response_ids.shape[1]
    for ids, mask, truncated in zip(
        rollout.response_ids.tolist(), rollout.response_mask.tolist(), rollout.truncated.tolist()
    ):
        if eos_id in ids:
            end = ids.index(eos_id)
            assert mask == [1] * (end + 1) + [0] * (width - end - 1)
            assert ids[end + 1 :] == [pad_id] * (width - end - 1)
            assert not truncated
        else:
            assert mask == [1] * width and pad_id not in ids
            assert truncated


def test_response_mask_pad_and_truncated_flags(lm):
    model, tokenizer = lm
    prompts = PROMPTS * 2
    for seed in range(20):  # find a draw with both finished and cut rows (the default model writes ~10-70 tokens)
        rollout = sample(lm, prompts, seed=seed, max_new_tokens=24)
        if 0 < rollout.truncated.sum() < len(prompts):
            break
    else:
        pytest.fail("no seed gave a batch mixing finished and truncated rows")
    assert rollout.response_ids.shape[1] == 24  # some row ran to the limit
    check_eos_layout(rollout, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert rollout.truncated_share == pytest.approx(rollout.truncated.float().mean().item())

    # full(): prompt and response side by side, masks joined.
    input_ids, attention_mask = rollout.full()
    assert torch.equal(input_ids[:, : rollout.prompt_ids.shape[1]], rollout.prompt_ids)
    assert torch.equal(attention_mask[:, rollout.prompt_ids.shape[1] :], rollout.response_mask)

    # Decoded text: the tokens before EOS, no EOS and no padding.
    texts = decode_responses(tokenizer, rollout)
    for text, ids, mask in zip(texts, rollout.response_ids.tolist(), rollout.response_mask.tolist()):
        kept = [t for t, m in zip(ids, mask) if m]
        if kept and kept[-1] == tokenizer.eos_token_id:
            kept = kept[:-1]
        assert text == tokenizer.decode(kept)
        assert tokenizer.eos_token not in text and tokenizer.pad_token not in text


def test_generation_stops_early_when_every_row_has_ended(lm):
    model, tokenizer = lm
    max_new = 200  # far more than the default model's reviews need (prompt + 200 stays under its 256 positions)
    rollout = sample(lm, PROMPTS[:3], seed=0, max_new_tokens=max_new)
    assert not rollout.truncated.any()
    check_eos_layout(rollout, tokenizer.eos_token_id, tokenizer.pad_token_id)
    eos_positions = [ids.index(tokenizer.eos_token_id) for ids in rollout.response_ids.tolist()]
    width = rollout.response_ids.shape[1]
    assert width == 1 + max(eos_positions) and width < max_new
    assert rollout.response_mask.sum(1).tolist() == [p + 1 for p in eos_positions]


def test_responses_end_at_the_models_own_end_of_turn_token(lm):
    # an instruct model lists its end-of-turn token beside the tokenizer's EOS in generation_config (Gemma's
    # <end_of_turn>, Llama-3's <|eot_id|>): sampling must stop there too, or every reply runs to max_new_tokens
    import copy

    model, tokenizer = lm
    free = sample(lm, seed=0, max_new_tokens=40)
    words = [t for ids, m in zip(free.response_ids.tolist(), free.response_mask.tolist()) for t, k in zip(ids, m) if k]
    end_of_turn = max(set(words) - {tokenizer.eos_token_id}, key=words.count)  # the commonest token as a stand-in
    instruct = copy.deepcopy(model)
    instruct.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    stops = stop_token_ids(tokenizer, instruct)
    assert stops == (tokenizer.eos_token_id, end_of_turn) and stop_token_ids(tokenizer, model) == (
        tokenizer.eos_token_id,
    )
    rollout = sample((instruct, tokenizer), seed=0, max_new_tokens=40, eos_id=stops)
    lengths = rollout.response_mask.sum(1).tolist()
    for ids, length, cut in zip(rollout.response_ids.tolist(), lengths, rollout.truncated.tolist()):
        body = ids[:length]
        assert end_of_turn not in body[:-1] and tokenizer.eos_token_id not in body[:-1]
        assert cut or body[-1] in stops
    assert sum(lengths) < free.response_mask.sum().item()  # rows that stopped at the end-of-turn token
    # the stop token is not part of the reply's text
    for text, ids, length in zip(decode_responses(tokenizer, rollout), rollout.response_ids.tolist(), lengths):
        kept = ids[:length] if ids[length - 1] not in stops else ids[: length - 1]
        assert text == tokenizer.decode(kept, skip_special_tokens=True)


def test_the_token_hook_sees_every_token_as_drawn_and_can_end_rows(lm):
    model, tokenizer = lm
    seen: dict[int, list[int]] = {row: [] for row in range(len(PROMPTS))}

    def watch(step, rows, tokens):
        for row, token in zip(rows.tolist(), tokens.tolist()):
            assert len(seen[row]) == step  # one token per live row per step, in order
            seen[row].append(token)

    rollout = sample(lm, seed=4, max_new_tokens=24, on_token=watch)
    plain = sample(lm, seed=4, max_new_tokens=24)
    assert torch.equal(rollout.response_ids, plain.response_ids)  # watching changes nothing
    for row in seen:
        assert seen[row] == rollout.response_ids[row][rollout.response_mask[row].bool()].tolist()

    limits = [3, 5, 24, 1]  # per-row token limits, as a server batching requests of different max_tokens has

    def cut(step, rows, tokens):
        return [row for row in rows.tolist() if step + 1 >= limits[row]]

    # greedy, so that the rows leaving the batch (which changes how many random numbers a step draws) change nothing
    plain = sample(lm, seed=4, max_new_tokens=24, top_k=1)
    ended = sample(lm, seed=4, max_new_tokens=24, top_k=1, on_token=cut)
    lengths = ended.response_mask.sum(1).tolist()
    for row, limit in enumerate(limits):
        assert lengths[row] <= limit
        assert ended.response_ids[row][: lengths[row]].tolist() == plain.response_ids[row][: lengths[row]].tolist()
        assert ended.response_mask[row].tolist() == [1] * lengths[row] + [0] * (
            ended.response_ids.shape[1] - lengths[row]
        )
        last = ended.response_ids[row][lengths[row] - 1]
        assert bool(ended.truncated[row]) == (last != tokenizer.eos_token_id)  # ended by the hook: no EOS, truncated


# ------------------------------------------------------------------------------------ seeding and decoding rules


def test_same_seed_same_samples_different_seed_different(lm):
    a = sample(lm, seed=7)
    b = sample(lm, seed=7)
    c = sample(lm, seed=8)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logps, b.logps)
    assert a.response_ids.shape != c.response_ids.shape or not torch.equal(a.response_ids, c.response_ids)


def test_top_k_1_is_greedy_decoding(lm):
    model, tokenizer = lm
    max_new = 16
    rollout = sample(lm, seed=3, top_k=1, max_new_tokens=max_new, temperature=0.8)
    for row, prompt in enumerate(prompt_ids(tokenizer)):
        # Manual greedy loop: full forward pass over the unpadded sequence, argmax, stop at EOS.
        seq, greedy = list(prompt), []
        for _ in range(max_new):
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            greedy.append(nxt)
            seq.append(nxt)
            if nxt == tokenizer.eos_token_id:
                break
        got = rollout.response_ids[row][rollout.response_mask[row].bool()].tolist()
        assert got == greedy
    # The logged log-probs stay those of the unfiltered tempered distribution, not log 1 = 0.
    assert (rollout.logps[rollout.response_mask.bool()] < 0).all()
    # Another seed cannot change a greedy decode.
    assert torch.equal(
        sample(lm, seed=99, top_k=1, max_new_tokens=max_new, temperature=0.8).response_ids, rollout.response_ids
    )


PROBS = [0.1, 0.5, 0.05, 0.2, 0.15]  # sorted: 0.5 (1), 0.2 (3), 0.15 (4), 0.1 (0), 0.05 (2)


def kept(logits: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(logits.tolist()) if v != float("-inf")}


@pytest.mark.parametrize(
    "top_p,expected", [(0.4, {1}), (0.6, {1, 3}), (0.8, {1, 3, 4}), (0.9, {1, 3, 4, 0}), (0.99, {0, 1, 2, 3, 4})]
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, expected):
    logits = torch.tensor(PROBS).log() + 3.0  # a constant shift changes nothing
    out = filter_logits(logits[None], top_p=top_p)[0]
    assert kept(out) == expected
    # Kept tokens keep their logits; the filtered distribution is the renormalised nucleus.
    assert torch.equal(out[sorted(expected)], logits[sorted(expected)])
    mass = sum(PROBS[i] for i in expected)
    assert mass >= top_p
    probs = torch.softmax(out, -1)
    for i in expected:
        assert probs[i].item() == pytest.approx(PROBS[i] / mass, rel=1e-5)


def test_top_k_keeps_k_and_combines_with_top_p():
    logits = torch.tensor([PROBS, PROBS[::-1]]).log()
    assert [kept(r) for r in filter_logits(logits, top_k=2)] == [{1, 3}, {3, 1}]
    assert [kept(r) for r in filter_logits(logits, top_k=1)] == [{1}, {3}]
    assert kept(filter_logits(logits, top_k=5)[0]) == set(range(5))  # k >= vocabulary: nothing filtered
    assert kept(filter_logits(logits, top_k=0, top_p=1.0)[0]) == set(range(5))
    # Top-k first, then nucleus on the renormalised top-k: 0.5 / (0.5 + 0.2 + 0.15) = 0.59 >= 0.55 keeps one token,
    # where nucleus alone (0.5 < 0.55) would keep two.
    assert kept(filter_logits(logits[:1], top_p=0.55)[0]) == {1, 3}
    assert kept(filter_logits(logits[:1], top_k=3, top_p=0.55)[0]) == {1}


# ----------------------------------------------------------------------------------------------- truncation warning


def test_sample_responses_warns_when_many_are_truncated(lm, capsys):
    model, tokenizer = lm
    prompts = PROMPTS[:3]
    capsys.readouterr()
    cut = sample_responses(model, tokenizer, prompts, max_new_tokens=4, seed=0, description="probe")
    err = " ".join(capsys.readouterr().err.split())
    assert cut.truncated_share > TRUNCATION_WARNING
    assert "WARNING (probe)" in err and "max_new_tokens=4" in err and f"{cut.truncated_share:.0%}" in err
    assert len(cut.responses) == len(prompts)

    whole = sample_responses(model, tokenizer, prompts, max_new_tokens=150, seed=0, description="probe")
    err = capsys.readouterr().err
    assert whole.truncated_share <= TRUNCATION_WARNING
    assert "WARNING" not in err
    # The full responses continue the cut ones (same seed, same draws) and are longer.
    for short, full in zip(cut.responses, whole.responses):
        assert full.startswith(short) and len(full) > len(short)


def test_truncation_warning_threshold_is_strictly_above_20_percent(capsys):
    capsys.readouterr()
    warn_if_truncated(0.2, 16)
    assert "WARNING" not in capsys.readouterr().err
    warn_if_truncated(0.25, 16, " (eval)")
    err = " ".join(capsys.readouterr().err.split())
    assert "WARNING (eval)" in err and "25%" in err and "max_new_tokens=16" in err
