"""The chunked output layer (forward.chunked_logps): log-probs, entropies and their gradients equal those of the full
[tokens, vocab] logits to fp32 rounding, on tiny decoders with a real model's vocabulary, through response_logps
(SFT, DPO), token_logps (the online stages, eval's KL) and whole stage runs; no vocabulary-wide tensor per position is
kept for the backward pass; "auto" chunks only large vocabularies and "chunked" refuses heads it cannot split."""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers as tf
from transformers import AutoModelForCausalLM

from rlhfkit import forward
from rlhfkit.config import DPOConfig, GRPOConfig, LoraSettings, RewardSpec, SFTConfig
from rlhfkit.data.tokenize import pad_left
from rlhfkit.errors import ConfigError
from rlhfkit.forward import CHUNKED_VOCAB, response_logps, token_logps, use_chunked
from rlhfkit.models.loading import apply_lora, load_tokenizer
from rlhfkit.models.tiny import build_tiny

VOCAB = 70_000  # above CHUNKED_VOCAB, so "auto" chunks; Llama-3 and Qwen have about twice as many
CHUNK = 7  # small and not a divisor of the position count: several chunks and a ragged last one


def tiny(arch: str = "qwen2", vocab: int = VOCAB, tied: bool = False, seed: int = 0):
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    config = {"qwen2": tf.Qwen2Config, "llama": tf.LlamaConfig, "gemma": tf.GemmaConfig}[arch](
        vocab_size=vocab, num_key_value_heads=2, tie_word_embeddings=tied, head_dim=8, **shape
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def pairs(seed: int = 0, n: int = 5) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 6))] for _ in range(n)]
    responses = [[rng.randrange(1, VOCAB) for _ in range(rng.randint(2, 9))] for _ in range(n)]
    return prompts, responses


def grads(model) -> dict[str, torch.Tensor]:
    out = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(full: dict, chunked: dict) -> None:
    assert full.keys() == chunked.keys() and full
    for name in full:
        scale = full[name].abs().max().clamp_min(1e-12)
        assert (full[name] - chunked[name]).abs().max() / scale < 1e-5, name  # fp32 rounding of a sum over vocab


@pytest.mark.parametrize("arch, tied", [("qwen2", True), ("llama", False)])
def test_response_logps_and_gradients_match_the_full_logits(arch, tied):
    model = tiny(arch, tied=tied)
    prompts, responses = pairs()
    results = {}
    for path in ("full", "chunked"):
        logps, counts = response_logps(model, prompts, responses, 0, logits=path, chunk_size=CHUNK)
        # the SFT loss and a DPO-style margin: both reach every row of the output layer through the log-sum-exp
        (-logps.sum() / counts.sum() + torch.nn.functional.logsigmoid(logps[0] - logps[1])).backward()
        results[path] = logps.detach(), grads(model)
    torch.testing.assert_close(results["chunked"][0], results["full"][0], rtol=1e-6, atol=1e-5)
    assert_same_grads(results["full"][1], results["chunked"][1])
    if tied:  # one tensor for the embedding and the output layer: its gradient has both contributions
        assert "model.embed_tokens.weight" in results["chunked"][1] and "lm_head.weight" not in results["chunked"][1]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logps_entropy_and_gradients_match_the_full_logits(temperature):
    model = tiny()
    prompts, responses = pairs(seed=1, n=4)
    left = pad_left(prompts, 0)
    right = torch.zeros(len(responses), max(map(len, responses)), dtype=torch.long)
    mask = torch.zeros_like(right)
    for i, r in enumerate(responses):
        right[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    input_ids = torch.cat([left["input_ids"], right], 1)
    attention_mask = torch.cat([left["attention_mask"], mask], 1)
    prompt_len = left["input_ids"].shape[1]
    results = {}
    for path in ("full", "chunked"):
        logps, entropy = token_logps(
            model, input_ids, attention_mask, prompt_len, temperature, True, logits=path, chunk_size=CHUNK
        )
        (logps.sum() - 0.01 * entropy.sum()).backward()  # a policy-gradient term and an entropy bonus
        results[path] = logps.detach(), entropy.detach(), grads(model)
    for a, b in zip(results["chunked"][:2], results["full"][:2]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
    assert (results["chunked"][0][mask.bool()] < 0).all() and (results["chunked"][0][~mask.bool()] == 0).all()
    assert_same_grads(results["full"][2], results["chunked"][2])
    with torch.no_grad():  # reference and eval log-probs: no recomputation, same values
        ref, _ = token_logps(model, input_ids, attention_mask, prompt_len, temperature, logits="chunked", chunk_size=3)
    torch.testing.assert_close(ref, results["full"][0], rtol=1e-6, atol=1e-5)


def test_lora_on_the_output_layer_trains_the_same_through_chunks():
    model = apply_lora(tiny(), LoraSettings(r=4, dropout=0.0, target_modules=["q_proj", "lm_head"]))
    with torch.no_grad():  # B starts at zero; move it so that A gets a gradient too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    assert use_chunked(model, "auto")  # the LoRA-wrapped output layer still shows its vocabulary
    prompts, responses = pairs(seed=2)
    results = {}
    for path in ("full", "chunked"):
        logps, _ = response_logps(model, prompts, responses, 0, logits=path, chunk_size=CHUNK)
        logps.sum().backward()
        results[path] = logps.detach(), grads(model)
    assert any("lm_head" in name and "lora_A" in name for name in results["chunked"][1])
    torch.testing.assert_close(results["chunked"][0], results["full"][0], rtol=1e-6, atol=1e-5)
    assert_same_grads(results["full"][1], results["chunked"][1])


def test_no_tensor_of_every_position_times_the_vocabulary_is_kept_for_backward():
    model = tiny()
    prompts, responses = pairs(seed=3, n=6)
    positions = sum(len(p) + len(r) - len(p) for p, r in zip(prompts, responses))
    for path in ("full", "chunked"):
        largest = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal largest
            largest = max(largest, t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logps, _ = response_logps(model, prompts, responses, 0, logits=path, chunk_size=CHUNK)
        logps.sum().backward()
        if path == "full":
            assert largest >= positions * VOCAB  # the logits of every predicted position
        else:
            assert largest <= CHUNK * VOCAB  # at most one chunk's logits, while recomputing it in the backward pass


def test_auto_chunks_large_vocabularies_and_chunked_refuses_what_it_cannot_split():
    assert use_chunked(tiny(), "auto") and not use_chunked(tiny(), "full")
    small = tiny(vocab=CHUNKED_VOCAB - 1)
    assert not use_chunked(small, "auto") and use_chunked(small, "chunked")
    gemma = tiny("gemma")  # outside PACKABLE: the Gemma family post-processes (Gemma 2 soft-caps) its logits
    assert not use_chunked(gemma, "auto")
    with pytest.raises(ConfigError, match=r"^logits: 'chunked' needs .*Set logits=auto or logits=full"):
        use_chunked(gemma, "chunked")
    assert f"{CHUNKED_VOCAB:,}" in SFTConfig.model_fields["logits"].description  # the documented threshold


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory):
    """The tiny Qwen2 with 70,000 output rows, the tokenizer's own rows scaled up so that it samples text (the rows
    past the tokenizer decode to nothing, and a reward of empty responses would not vary)."""
    out = build_tiny("qwen2", tmp_path_factory.mktemp("qwen2_big_vocab"), vocab_size=VOCAB)
    model, tokens = AutoModelForCausalLM.from_pretrained(str(out)), len(load_tokenizer(out))
    with torch.no_grad():
        model.lm_head.weight[:tokens] *= 30
    model.save_pretrained(str(out))
    return out


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def chunk_calls(monkeypatch) -> list[int]:
    """Counts the calls of forward.chunked_logps (positions per call), so a stage run shows which path it took."""
    calls, real = [], forward.chunked_logps

    def spy(hidden, *args, **kwargs):
        calls.append(hidden.shape[0])
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(forward, "chunked_logps", spy)
    return calls


def test_sft_and_dpo_train_the_same_with_chunked_and_full_logits(big_vocab, tmp_path, chunk_calls):
    from rlhfkit.stages import dpo, sft

    rng = random.Random(0)
    words = ["good", "bad", "film", "plot", "slow", "great", "dull", "fun"]
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    sft_data, pref_data = tmp_path / "sft.jsonl", tmp_path / "pref.jsonl"
    sft_data.write_text("".join(json.dumps({"prompt": text(4), "response": text(6)}) + "\n" for _ in range(24)))
    pref_data.write_text(
        "".join(json.dumps({"prompt": text(4), "chosen": text(5), "rejected": text(3)}) + "\n" for _ in range(16))
    )
    common = dict(model=str(big_vocab), max_steps=3, batch_size=4, lr=1e-3, log_every=1, eval_every=3, seed=0)
    for path in ("full", "chunked"):
        sft.run(SFTConfig(data=str(sft_data), output_dir=str(tmp_path / f"sft_{path}"), logits=path, **common))
        dpo.run(DPOConfig(data=str(pref_data), output_dir=str(tmp_path / f"dpo_{path}"), logits=path, **common))
        assert bool(chunk_calls) == (path == "chunked")
    for stage in ("sft", "dpo"):
        full, chunked = metrics(tmp_path / f"{stage}_full"), metrics(tmp_path / f"{stage}_chunked")
        assert len(full) == len(chunked) == 3 and "val_loss" in full[-1]
        for a, b in zip(full, chunked):
            assert a.keys() == b.keys()
            for key in ("loss", "grad_norm", "val_loss", "val_reward_accuracy"):
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (stage, key)


def test_grpo_trains_the_same_with_chunked_and_full_logits(big_vocab, tmp_path, chunk_calls):
    from rlhfkit.stages import grpo

    length = [RewardSpec(function="rlhfkit.scoring:word_count")]  # varies within a group: the policy loss is not 0
    for path in ("full", "chunked"):
        config = GRPOConfig(
            model=str(big_vocab),
            output_dir=str(tmp_path / path),
            steps=2,
            batch_size=2,
            group_size=4,
            mini_batch_size=8,
            max_new_tokens=8,
            lr=1e-3,
            rewards=length,
            logits=path,
            seed=0,
        )
        grpo.run(config)
        assert bool(chunk_calls) == (path == "chunked")  # the update and the reference log-probs
    full, chunked = metrics(tmp_path / "full"), metrics(tmp_path / "chunked")
    assert full[-1]["kl"] > 0.01  # the first update moved the policy away from the reference
    for a, b in zip(full, chunked):
        for key in ("reward", "kl", "entropy", "policy_loss", "kl_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_the_chunk_backward_is_the_derivative_of_log_probs_and_entropy():
    torch.manual_seed(0)
    logits = (3 * torch.randn(5, 11, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 11, (5,))
    torch.autograd.gradcheck(lambda z: forward.LabelLogpsEntropy.apply(z, labels), (logits,))
    torch.autograd.gradcheck(lambda z: forward.LabelLogpsEntropy.apply(z, labels)[1], (logits,))  # entropy alone
    torch.autograd.gradcheck(lambda z: forward.LabelLogpsEntropy.apply(z, labels, False)[0], (logits,))  # SFT, DPO
    logps, entropy = forward.LabelLogpsEntropy.apply(logits, labels)
    reference = torch.log_softmax(logits, -1)
    torch.testing.assert_close(logps, reference.gather(1, labels[:, None]).squeeze(1))
    torch.testing.assert_close(entropy, -(reference.exp() * reference).sum(-1))
