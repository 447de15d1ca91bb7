"""The architecture matrix: every training stage on tiny random Llama, Qwen2, Mistral, GPT-2, GPT-NeoX, OPT, Phi and
Gemma models, with full fine-tuning and with LoRA, a couple of steps each; and the families users bring now (Qwen3,
OLMo-2, Granite, Gemma 2, Gemma 3, Phi-3, SmolLM3: `tiny.NEW_ARCHS`) on SFT, reward, DPO and GRPO with full fine-tuning
(their LoRA path is the same peft code the first eight prove; leaving it out keeps the matrix's time down). KTO, online
DPO and REINFORCE++ run on the first eight with full fine-tuning and on Llama with LoRA.

The models come from the real transformers config classes (`rlhfkit.models.tiny`), are saved to directories and loaded
by path like any user model. Each run must save a model that plain `transformers` reloads (a merged LoRA leaves no
adapter files behind) and that gives finite outputs. Part of the data is conversations, so the chat-template path runs
for the architectures whose tokenizer has one (the real ChatML, Llama-3 and Gemma templates).

RLHFKIT_MATRIX_EXTRA (JSON) adds config keys to every stage whose config has them: bench/gpu/run.sh runs the matrix
on a GPU with '{"device": "cuda", "mixed_precision": "bf16", "gradient_checkpointing": true}' (the training stages take
all three; the online stages have none of them and run on the CPU as always).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhfkit.config import (
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    LoraSettings,
    OnlineDPOConfig,
    PPOConfig,
    ReinforcePPConfig,
    RewardSpec,
    RewardTrainConfig,
    SFTConfig,
)
from rlhfkit.data.tokenize import render_prompt
from rlhfkit.errors import ModelError
from rlhfkit.models.loading import find_lora_targets, load_reward_model, load_tokenizer
from rlhfkit.models.tiny import ARCH_CHAT, ARCHS, CHAT_ARCHS, NEW_ARCHS, build_tiny
from rlhfkit.stages import dpo, grpo, kto, online_dpo, ppo, reinforce_pp, reward, sft

STAGES = ("sft", "reward", "dpo", "ppo", "grpo")
MODES = ("full", "lora")
FIRST_ARCHS = tuple(a for a in ARCHS if a not in NEW_ARCHS)
NEW_STAGES = ("sft", "reward", "dpo", "grpo")
MATRIX = [(a, s, m) for a in FIRST_ARCHS for s in STAGES for m in MODES] + [
    (a, s, "full") for a in NEW_ARCHS for s in NEW_STAGES
]
MATRIX.append(("granite", "reward", "lora"))  # LoRA (peft's SEQ_CLS wrapper) on rlhfkit's own score head
MATRIX += [(a, "kto", "full") for a in FIRST_ARCHS] + [("llama", "kto", "lora")]
# the two later online stages share ppo's and grpo's rollout engine and reference handling: every first-wave family
# with full fine-tuning, LoRA (the adapter-disabled reference) on one
MATRIX += [(a, s, "full") for a in FIRST_ARCHS for s in ("online_dpo", "reinforce_pp")]
MATRIX += [("llama", "online_dpo", "lora"), ("llama", "reinforce_pp", "lora")]
MATRIX_EXTRA = json.loads(os.environ.get("RLHFKIT_MATRIX_EXTRA") or "{}")

TOPICS = [
    "the pasta",
    "the hotel room",
    "the bike shop",
    "the new phone",
    "the museum",
    "the bakery",
    "the dentist",
    "the film",
    "the train ride",
    "the coffee",
    "the bookshop",
    "the gym",
    "the concert",
    "the garden centre",
    "the pizza",
    "the hostel",
]


def prompt_of(i: int):
    """Every fourth prompt is a conversation (a system and a user turn); the rest are plain text."""
    text = f"Write a short review of {TOPICS[i]}."
    if i % 4 == 0:
        return [{"role": "system", "content": "You write reviews."}, {"role": "user", "content": text}]
    return text


def write_jsonl(path: Path, objs) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """All the tiny models and the three data files, made once for the module."""
    root = tmp_path_factory.mktemp("arch")
    models = {arch: build_tiny(arch, root / "models" / arch) for arch in ARCHS}
    n = len(TOPICS)
    data = {
        "sft": write_jsonl(
            root / "sft.jsonl",
            [
                {"messages": prompt_of(i) + [{"role": "assistant", "content": f"I liked {TOPICS[i]} a lot."}]}
                if i % 8 == 0
                else {"prompt": prompt_of(i), "response": f" I liked {TOPICS[i]} a lot."}
                for i in range(n)
            ],
        ),
        "pairs": write_jsonl(
            root / "pairs.jsonl",
            [
                {
                    "prompt": prompt_of(i),
                    "chosen": f" {TOPICS[i].capitalize()} was lovely.",
                    "rejected": f" {TOPICS[i].capitalize()} was awful.",
                }
                for i in range(n)
            ],
        ),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": prompt_of(i)} for i in range(n)]),
        "thumbs": write_jsonl(
            root / "thumbs.jsonl",
            [
                {"prompt": prompt_of(i), "completion": f" {TOPICS[i].capitalize()} was lovely.", "label": i % 3 > 0}
                for i in range(n)
            ],
        ),
    }
    return models, data


def run_stage(stage: str, model_dir: Path, data: dict, out: Path, lora: LoraSettings | None, **extra) -> Path:
    """A couple of steps of `stage` from `model_dir` (`extra`: more config keys, over RLHFKIT_MATRIX_EXTRA's);
    returns the saved model directory."""
    common = {"model": str(model_dir), "output_dir": str(out), "lora": lora, "seed": 0, **extra}
    trained = {"max_steps": 2, "batch_size": 4, "max_length": 48, "max_prompt_length": 32, "log_every": 1}
    online = {
        "prompts": str(data["prompts"]),
        "rewards": [RewardSpec(function="default")],
        "gold": None,
        "max_new_tokens": 8,
        "max_prompt_length": 32,
        "steps": 1,
    }
    kinds = {
        "sft": (SFTConfig, sft.run, {"data": str(data["sft"]), "val_fraction": 0.25, **trained}),
        "reward": (
            RewardTrainConfig,
            reward.train,
            {"data": str(data["pairs"]), "eval_every": 1, "patience": 0, **trained},
        ),
        "dpo": (DPOConfig, dpo.run, {"data": str(data["pairs"]), "val_fraction": 0.25, **trained}),
        "kto": (KTOConfig, kto.run, {"data": str(data["thumbs"]), "val_fraction": 0.25, **trained}),
        "ppo": (PPOConfig, ppo.run, {"batch_size": 2, "mini_batch_size": 2, "epochs_per_batch": 1, **online}),
        "online_dpo": (OnlineDPOConfig, online_dpo.run, {"batch_size": 2, "mini_batch_size": 4, **online}),
        "reinforce_pp": (ReinforcePPConfig, reinforce_pp.run, {"batch_size": 2, "mini_batch_size": 2, **online}),
        "grpo": (GRPOConfig, grpo.run, {"batch_size": 1, "group_size": 2, "mini_batch_size": 2, **online}),
    }
    config, run, values = kinds[stage]
    accepted = {key: value for key, value in MATRIX_EXTRA.items() if key in config.model_fields}
    run(config(**{**values, **accepted, **common}))
    return out / "model"


def finite_outputs(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("The soup was good.", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    return logits


@pytest.mark.parametrize(("arch", "stage", "mode"), MATRIX)
def test_stage_runs_and_reloads_in_plain_transformers(matrix, arch, stage, mode, tmp_path):
    models, data = matrix
    saved = run_stage(stage, models[arch], data, tmp_path / "run", LoraSettings(r=4) if mode == "lora" else None)

    # Granite has no sequence-classification class in transformers: rlhfkit's own (registered with the Auto class
    # when rlhfkit loads one; test_reward_heads loads it without rlhfkit)
    auto = AutoModelForSequenceClassification if stage == "reward" else AutoModelForCausalLM
    model = auto.from_pretrained(str(saved)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(saved))
    assert model.config.model_type == arch
    logits = finite_outputs(model, tokenizer)
    assert logits.shape[-1] == (1 if stage == "reward" else len(tokenizer))
    # The default merge=True leaves a plain model: no adapter files, no LoRA weights.
    assert not (saved / "adapter_config.json").exists() and not (saved / "adapter_model.safetensors").exists()
    assert not any("lora_" in name for name in model.state_dict())
    assert bool(tokenizer.chat_template) == (arch in CHAT_ARCHS)
    if stage in ("sft", "dpo", "kto"):
        # Two steps on a loss with a non-zero gradient move the saved weights (with LoRA: the merge happened).
        base = AutoModelForCausalLM.from_pretrained(str(models[arch])).state_dict()
        trained = model.state_dict()
        assert base.keys() == trained.keys()
        assert any(not torch.equal(base[name], trained[name]) for name in base)


def test_tiny_builds_are_seeded_and_use_the_default_tokenizer(matrix, tmp_path):
    models, _ = matrix
    again = AutoModelForCausalLM.from_pretrained(str(build_tiny("llama", tmp_path / "llama"))).state_dict()
    first = AutoModelForCausalLM.from_pretrained(str(models["llama"])).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)
    other_seed = AutoModelForCausalLM.from_pretrained(str(build_tiny("llama", tmp_path / "seed1", seed=1))).state_dict()
    assert not torch.equal(
        first["model.layers.0.self_attn.q_proj.weight"], other_seed["model.layers.0.self_attn.q_proj.weight"]
    )
    for arch in ARCHS:
        config = AutoModelForCausalLM.from_pretrained(str(models[arch])).config
        tokenizer = AutoTokenizer.from_pretrained(str(models[arch]))
        assert config.vocab_size == len(tokenizer)
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )
    with pytest.raises(ModelError, match="unknown architecture; choose one of llama, qwen2"):
        build_tiny("bloom", tmp_path / "bloom")


@pytest.mark.parametrize("arch", FIRST_ARCHS)
def test_ppo_with_a_value_head_on_the_policy(matrix, arch, tmp_path):
    models, data = matrix
    out = tmp_path / "run"
    saved = run_stage("ppo", models[arch], data, out, None, value_model="shared")
    assert (out / "value_head.pt").is_file() and not (out / "value_model").exists()
    finite_outputs(AutoModelForCausalLM.from_pretrained(str(saved)).eval(), AutoTokenizer.from_pretrained(str(saved)))


@pytest.mark.parametrize("arch", ["opt"])
def test_ppo_separate_critic_on_an_architecture_without_token_classification(matrix, arch, tmp_path):
    # OPT has no *ForTokenClassification class; the separate critic is the bare backbone plus a value head.
    models, data = matrix
    run_stage("ppo", models[arch], data, tmp_path / "run", None, value_model="separate")
    assert (tmp_path / "run" / "value_model" / "config.json").is_file() and (
        tmp_path / "run" / "value_head.pt"
    ).is_file()


@pytest.mark.parametrize("arch", ARCHS)
def test_conversation_prompts_use_the_chat_template_where_there_is_one(matrix, arch):
    models, _ = matrix
    text = render_prompt(load_tokenizer(models[arch]), prompt_of(0))
    if arch in CHAT_ARCHS:
        assert "You write reviews." in text and "Write a short review of the pasta." in text
        assert text.endswith(GENERATION_PROMPTS[ARCH_CHAT[arch]])
    else:
        assert text == "\n\nSystem: You write reviews.\n\nHuman: Write a short review of the pasta.\n\nAssistant:"


GENERATION_PROMPTS = {
    "chatml": "<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<end_of_turn>\n<start_of_turn>model\n",
}

LLAMA_LIKE = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
EXPECTED_TARGETS = {
    "llama": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "gemma": LLAMA_LIKE,
    "gpt2": ["c_attn", "c_fc", "c_proj"],
    "gpt_neox": ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"],
    "opt": ["fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj"],
    "phi": ["dense", "fc1", "fc2", "k_proj", "q_proj", "v_proj"],
    **{arch: LLAMA_LIKE for arch in ("qwen3", "olmo2", "granite", "gemma2", "gemma3_text", "smollm3")},
    "phi3": ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"],
}


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_targets_are_the_attention_and_mlp_projections(matrix, arch):
    models, _ = matrix
    assert find_lora_targets(AutoModelForCausalLM.from_pretrained(str(models[arch]))) == EXPECTED_TARGETS[arch]
    assert (
        find_lora_targets(load_reward_model(models[arch], load_tokenizer(models[arch]), new_head=True))
        == EXPECTED_TARGETS[arch]
    )


def test_explicit_lora_targets_adapt_only_those_modules(matrix, tmp_path):
    models, data = matrix
    lora = LoraSettings(r=4, target_modules=["q_proj", "v_proj"])
    saved = run_stage("sft", models["llama"], data, tmp_path / "run", lora)
    base = AutoModelForCausalLM.from_pretrained(str(models["llama"])).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(str(saved)).state_dict()
    assert base.keys() == merged.keys()
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    expected = {f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "v_proj")}
    assert changed == expected
