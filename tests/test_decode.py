"""Lean decoding (rlhfkit.decode) must produce what the model's own forward produces, token for token, on every
architecture it takes over; the rest must still decode through the model's forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from rlhfkit import rollout
from rlhfkit.decode import LeanDecoder
from rlhfkit.models.tiny import build_tiny
from rlhfkit.rollout import cache_kwarg, cache_of

PAD, EOS = 1, 0
LEAN_ARCHS = ("gpt2", "llama", "mistral", "qwen2", "qwen3")


def tiny_model(arch: str, root):
    if arch == "qwen3":  # not in the tiny matrix; built here for its per-head q/k norms
        config = Qwen3Config(
            vocab_size=300,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
            max_position_embeddings=256,
            pad_token_id=PAD,
        )
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).eval()
    return AutoModelForCausalLM.from_pretrained(str(build_tiny(arch, root / arch))).eval()


def left_padded(lengths, seed=0, vocab=250):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n :] = torch.randint(5, vocab, (n,), generator=g)
        mask[i, width - n :] = 1
    return ids, mask


@pytest.mark.parametrize("arch", LEAN_ARCHS)
def test_lean_steps_give_the_logits_of_the_models_forward(arch, tmp_path):
    """Teacher-forced: the same tokens through lean steps and through the model's cached forward, including a row
    that ends half-way (masked out of later steps) and prompts of different lengths (left padding)."""
    model = tiny_model(arch, tmp_path)
    ids, mask = left_padded([7, 3, 5, 1])
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True)
        lean = LeanDecoder.attach(model, cache_of(out), mask, 6)
        assert lean is not None
        past, hf_mask, next_pos = cache_of(out), mask, position[:, -1:] + 1
        g = torch.Generator().manual_seed(1)
        live = torch.ones(4, dtype=torch.bool)
        for step in range(6):
            tokens = torch.randint(5, 250, (4,), generator=g)
            if step == 2:
                live[1] = False  # row 1 ended: from now on its tokens are padding and masked out
            tokens = torch.where(live, tokens, torch.full_like(tokens, PAD))
            hf_mask = torch.cat([hf_mask, live[:, None].long()], 1)
            out = model(
                input_ids=tokens[:, None],
                attention_mask=hf_mask,
                position_ids=next_pos,
                use_cache=True,
                **{cache_kwarg(model): past},
            )
            past, expected = cache_of(out), out.logits[:, -1].float()
            got = lean.step(tokens, next_pos, live)
            torch.testing.assert_close(got[live], expected[live], atol=2e-5, rtol=1e-4)
            next_pos = next_pos + 1


def sampled(model, ids, mask, lean: bool, monkeypatch, eos=EOS, **kw):
    with monkeypatch.context() as m:
        if not lean:
            m.setattr(rollout.LeanDecoder, "attach", classmethod(lambda cls, *a: None))
        return rollout.generate(
            model, ids, mask, eos_id=eos, pad_id=PAD, generator=torch.Generator().manual_seed(3), **kw
        )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generate_samples_the_same_tokens_with_and_without_the_lean_path(arch, tmp_path, monkeypatch):
    """Groups of a repeated prompt (one prefill, then copied), rows that end at EOS and leave the batch, temperature
    and top-p: the lean path must sample exactly what the model's forward samples."""
    model = tiny_model(arch, tmp_path)
    ids, mask = left_padded([6, 2, 4], seed=4)
    ids, mask = ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0)
    # Stand-in EOS: the token that turns up in the most rows of a run without one, so that rows end at different
    # steps and are dropped from the cache.
    free = sampled(model, ids, mask, False, monkeypatch, eos=10**6, max_new_tokens=24, temperature=0.9, top_p=0.95)
    eos = max(range(300), key=lambda t: int((free.response_ids == t).any(1).sum()))
    fast = sampled(model, ids, mask, True, monkeypatch, eos=eos, max_new_tokens=24, temperature=0.9, top_p=0.95)
    slow = sampled(model, ids, mask, False, monkeypatch, eos=eos, max_new_tokens=24, temperature=0.9, top_p=0.95)
    lengths = fast.response_mask.sum(1)
    assert lengths.min() < lengths.max()  # rows did end at different steps
    assert torch.equal(fast.response_ids, slow.response_ids)
    assert torch.equal(fast.response_mask, slow.response_mask)
    torch.testing.assert_close(fast.logps, slow.logps, atol=1e-5, rtol=1e-5)


def test_lora_wrapped_model_decodes_through_its_adapters(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_model("llama", tmp_path), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"])
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero adapters: a path that skipped them would sample differently
            torch.nn.init.normal_(p, std=0.5)
    ids, mask = left_padded([5, 3], seed=2)
    fast = sampled(model, ids, mask, True, monkeypatch, max_new_tokens=12)
    slow = sampled(model, ids, mask, False, monkeypatch, max_new_tokens=12)
    with torch.no_grad(), model.disable_adapter():
        plain = sampled(model, ids, mask, False, monkeypatch, max_new_tokens=12)
    assert torch.equal(fast.response_ids, slow.response_ids)
    assert not torch.equal(fast.response_ids, plain.response_ids)  # the adapters did change the samples


def test_variants_it_does_not_reproduce_decode_through_the_model(tmp_path, monkeypatch):
    ids, mask = left_padded([4, 2], seed=5)
    gpt2 = tiny_model("gpt2", tmp_path)
    gpt2.config.scale_attn_by_inverse_layer_idx = True
    mistral = tiny_model("mistral", tmp_path)
    mistral.config.sliding_window = 8  # shorter than prompt + new tokens
    phi = tiny_model("phi", tmp_path)
    for model in (gpt2, mistral, phi):
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        assert LeanDecoder.attach(model, cache_of(out), mask, 10) is None
    # and sampling still works for them, through the model's forward
    result = sampled(phi, ids, mask, True, monkeypatch, max_new_tokens=6)
    assert result.response_ids.shape == (2, result.response_mask.shape[1])
