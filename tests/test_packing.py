"""The padding-free forward: sequences packed end to end must give the same response log-probs, gradients and
reward scores as the plain padded batch through the whole model, on every architecture it is enabled for; the
others fall back to the padded path."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit.data.tokenize import MAX_PACK_WIDTH, pack_rows, pack_width, pad_sequences
from rlhfkit.forward import PACKABLE, decoder_parts, response_logits, response_logps
from rlhfkit.losses import sequence_logps
from rlhfkit.models.tiny import ARCHS, build_tiny
from rlhfkit.scoring import score_sequences

PAD = 0


def batch(seed: int, n: int = 9) -> tuple[list[list[int]], list[list[int]]]:
    """One long sequence and short ones of varied length, so that several share a packed row."""
    rng = random.Random(seed)
    lengths = [(10, 30)] + [(rng.randint(1, 6), rng.randint(1, 8)) for _ in range(n - 1)]
    prompts = [[rng.randrange(5, 200) for _ in range(p)] for p, _ in lengths]
    responses = [[rng.randrange(5, 200) for _ in range(r)] for _, r in lengths]
    assert len(set(pack_rows([p + r for p, r in zip(prompts, responses)], PAD)["row"])) < n // 2  # rows are shared
    return prompts, responses


def padded_logps(model, prompts, responses):
    b = pad_sequences(prompts, responses, PAD)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return sequence_logps(logits[:, :-1], b["input_ids"][:, 1:], b["response_mask"][:, 1:])


@pytest.mark.parametrize("attention_cost", [None, 1e-3])
def test_pack_rows_places_every_sequence_once_with_restarting_positions(attention_cost):
    seqs = [[7 + i] * n for i, n in enumerate((9, 2, 5, 3, 1, 4, 8, 7, 6, 6))]
    packed = pack_rows(seqs, PAD, attention_cost)
    ids, pos = packed["input_ids"], packed["position_ids"]
    width = max(map(len, seqs))
    assert ids.shape[1] >= width and ids.shape[0] < len(seqs)  # short sequences share rows
    if attention_cost is None:
        assert ids.shape[1] == width
    used = torch.zeros_like(ids, dtype=torch.bool)
    for i, s in enumerate(seqs):
        r, start = packed["row"][i], packed["start"][i]
        span = slice(start, start + len(s))
        assert not used[r, span].any()  # no two sequences overlap
        used[r, span] = True
        assert ids[r, span].tolist() == s and pos[r, span].tolist() == list(range(len(s)))
    assert used.sum().item() == sum(map(len, seqs))


def test_rows_are_widened_only_while_it_saves_more_padding_than_the_wider_attention_costs():
    lengths = [117, 70, 60, 50, 45, 95, 30, 105]  # rows as wide as the longest: 6 rows, 81% real tokens
    seqs = [[9] * n for n in lengths]
    narrow = pack_rows(seqs, PAD)["input_ids"]
    cheap = pack_rows(seqs, PAD, attention_cost=3e-4)["input_ids"]  # a 20M-parameter model's attention share
    assert (cheap != PAD).sum() == (narrow != PAD).sum() == sum(lengths)
    assert sum(lengths) / cheap.numel() > 0.9 > sum(lengths) / narrow.numel()  # real-token share through the matmuls
    assert cheap.shape[1] <= 4 * max(lengths)
    # when attention is dear, the rows stay as wide as the longest sequence
    assert pack_rows(seqs, PAD, attention_cost=1.0)["input_ids"].shape == narrow.shape
    assert pack_width(lengths, attention_cost=1.0) == max(lengths)
    # long sequences: rows are never widened past MAX_PACK_WIDTH (the mask grows with the square of the width)
    assert pack_width([1500, 1400, 300, 200, 100, 1900], attention_cost=1e-6) <= MAX_PACK_WIDTH
    assert pack_width([3000, 100, 200], attention_cost=1e-6) == 3000


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    return {arch: build_tiny(arch, root / arch) for arch in ARCHS}


@pytest.fixture(params=["longest", "widened"])
def rows(request, monkeypatch):
    """Rows as wide as the longest sequence (a model whose attention is dear), or widened to several sequences per
    row (a model whose attention is cheap): the packed forward must be exact either way."""
    import rlhfkit.train

    cost = 1.0 if request.param == "longest" else 1e-6
    monkeypatch.setattr(rlhfkit.forward, "attention_cost", lambda backbone: cost)
    return cost


def check_width(seqs, cost):
    width = pack_rows(seqs, PAD, cost)["input_ids"].shape[1]
    assert width == max(map(len, seqs)) if cost == 1.0 else width > max(map(len, seqs))


@pytest.mark.parametrize("arch", [a for a in ARCHS if a in PACKABLE])
def test_packed_log_probs_and_gradients_equal_the_padded_batch(models, arch, rows):
    model = AutoModelForCausalLM.from_pretrained(models[arch])
    assert response_logits(model, [[5]], [[6]], PAD) is not None  # the packed path is the one under test
    prompts, responses = batch(1)
    check_width([p + r for p, r in zip(prompts, responses)], rows)
    packed_sums, packed_counts = response_logps(model, prompts, responses, PAD)
    packed_sums.sum().backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    sums, counts = padded_logps(model, prompts, responses)
    sums.sum().backward()
    assert packed_counts.tolist() == counts.tolist() == [float(len(r)) for r in responses]
    torch.testing.assert_close(packed_sums, sums, rtol=1e-4, atol=1e-4)
    for got, want in zip(packed_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a in PACKABLE])
def test_packed_reward_scores_equal_the_models_own_forward(models, arch, rows):
    model = AutoModelForSequenceClassification.from_pretrained(models[arch], num_labels=1).eval()
    assert decoder_parts(model, head="score") is not None
    prompts, responses = batch(2)
    seqs = [p + r for p, r in zip(prompts, responses)]
    check_width(seqs, rows)
    got = score_sequences(model, seqs, PAD)
    ids = torch.full((len(seqs), max(map(len, seqs))), PAD)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    model.config.pad_token_id = PAD
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in PACKABLE])
def test_other_architectures_take_the_padded_path(models, arch):
    model = AutoModelForCausalLM.from_pretrained(models[arch])
    assert decoder_parts(model) is None
    prompts, responses = batch(3)
    sums, _ = response_logps(model, prompts, responses, PAD)
    torch.testing.assert_close(sums, padded_logps(model, prompts, responses)[0])


@pytest.mark.parametrize("arch", ["gpt2", "phi"])
def test_fused_gelu_gives_the_same_outputs(models, arch):
    from rlhfkit.models.loading import load_causal_lm

    plain = AutoModelForCausalLM.from_pretrained(models[arch])
    fused = load_causal_lm(models[arch])
    act = getattr(fused.config, "activation_function", None) or fused.config.hidden_act
    assert act == "gelu_pytorch_tanh"
    ids = torch.tensor([[5, 17, 42, 99, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
