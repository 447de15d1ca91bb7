"""Chat templates as real models ship them: ChatML (Qwen2-Instruct), Llama-3-Instruct and Gemma 3, written into the tiny
models' tokenizers (`rlhfkit.models.tiny.CHAT_FORMATS`).

SFT on `messages` trains exactly the assistant turns (content and end-of-turn token, every turn, nothing of the system
and user turns or of the role headers: checked token by token against the pieces the template is made of); sampling
from conversation prompts (pairs, online RL, eval, serve, the judge) ends the prompt with the generation prompt; a
multi-turn conversation on a tokenizer without a template, a template that refuses a conversation and one that is not
prefix-consistent are errors that say what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhfkit.config import SFTConfig
from rlhfkit.data.chat import conversation_labels
from rlhfkit.data.records import SFTExample
from rlhfkit.data.tokenize import Encoder
from rlhfkit.errors import DataError
from rlhfkit.feedback.judge import CausalLMJudge, Question
from rlhfkit.forward import labelled_logps
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import build_tiny
from rlhfkit.online import PromptStream
from rlhfkit.rollout import sample_responses
from rlhfkit.stages import sft

SYSTEM = {"role": "system", "content": "You write reviews."}
CONVERSATION = [
    SYSTEM,
    {"role": "user", "content": "How was the pasta?"},
    {"role": "assistant", "content": "The pasta was lovely."},
    {"role": "user", "content": "And the wine?"},
    {"role": "assistant", "content": "The wine was sour."},
]

# The whole conversation as each template renders it, in pieces: (text, trained?). Written out by hand from the
# templates, so the masks are checked against the template's text, not against the prefix rendering that made them.
EXPECTED = {
    "qwen2": [
        ("<|im_start|>system\nYou write reviews.<|im_end|>\n<|im_start|>user\nHow was the pasta?<|im_end|>\n", 0),
        ("<|im_start|>assistant\n", 0),
        ("The pasta was lovely.<|im_end|>", 1),
        ("\n<|im_start|>user\nAnd the wine?<|im_end|>\n<|im_start|>assistant\n", 0),
        ("The wine was sour.<|im_end|>", 1),
        ("\n", 0),
    ],
    "llama": [
        ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou write reviews.<|eot_id|>", 0),
        ("<|start_header_id|>user<|end_header_id|>\n\nHow was the pasta?<|eot_id|>", 0),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n", 0),
        ("The pasta was lovely.<|eot_id|>", 1),
        ("<|start_header_id|>user<|end_header_id|>\n\nAnd the wine?<|eot_id|>", 0),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n", 0),
        ("The wine was sour.<|eot_id|>", 1),
    ],
    # Gemma has no system role: the system prompt opens the first user turn; the assistant is "model"
    "gemma": [
        ("<bos><start_of_turn>user\nYou write reviews.\n\nHow was the pasta?<end_of_turn>\n<start_of_turn>model\n", 0),
        ("The pasta was lovely.<end_of_turn>", 1),
        ("\n<start_of_turn>user\nAnd the wine?<end_of_turn>\n<start_of_turn>model\n", 0),
        ("The wine was sour.<end_of_turn>", 1),
        ("\n", 0),
    ],
}
GENERATION_PROMPT = {
    "qwen2": "<|im_start|>assistant\n",
    "llama": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<start_of_turn>model\n",
}
TEMPLATED = tuple(EXPECTED)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat")
    return {arch: build_tiny(arch, root / arch) for arch in (*TEMPLATED, "gpt2")}


def pieces_to_labels(tokenizer, pieces) -> tuple[list[int], list[int]]:
    ids, mask = [], []
    for text, trained in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [trained] * len(piece)
    return ids, mask


@pytest.mark.parametrize("arch", TEMPLATED)
def test_every_assistant_turn_and_only_it_is_trained_token_by_token(models, arch):
    tokenizer = load_tokenizer(models[arch])
    ids, mask = conversation_labels(tokenizer, CONVERSATION)
    assert (ids, mask) == pieces_to_labels(tokenizer, EXPECTED[arch])
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    end = tokenizer.eos_token  # each template's end-of-turn token is the tokenizer's EOS: sampling stops there
    assert trained == f"The pasta was lovely.{end}The wine was sour.{end}"
    # a prompt + response record trains its response only; the earlier turns are context
    _, last_only = conversation_labels(tokenizer, CONVERSATION, last_only=True)
    assert tokenizer.decode([t for t, m in zip(ids, last_only) if m]) == f"The wine was sour.{end}"


def test_chatml_adds_its_default_system_prompt_untrained(models):
    tokenizer = load_tokenizer(models["qwen2"])
    ids, mask = conversation_labels(tokenizer, CONVERSATION[1:3])
    untrained = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert untrained.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == "The pasta was lovely.<|im_end|>"


@pytest.mark.parametrize("arch", TEMPLATED)
def test_conversation_prompts_end_with_the_generation_prompt_wherever_they_are_sampled(models, arch, tmp_path):
    tokenizer = load_tokenizer(models[arch])
    prompt = CONVERSATION[:4]
    # pairs, eval and best-of-n sample through rollout.sample_responses, online RL from a PromptStream, the gateway
    # through render_prompt (test_serve); all three render with Encoder.prompt_ids / render_prompt
    samples = sample_responses(load_causal_lm(models[arch]), tokenizer, [prompt], max_new_tokens=2, seed=0)
    ids, _ = Encoder(tokenizer, 256, 128).prompt_ids(prompt)
    assert tokenizer.decode(ids).endswith(GENERATION_PROMPT[arch])
    assert samples.prompts[0] == tokenizer.decode(ids)
    online = PromptStream(write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": prompt}]), tokenizer, 128, seed=0)
    assert online.ids == [ids]
    # the prompt is the conversation's own tokens up to its last assistant turn
    full_ids, mask = conversation_labels(tokenizer, CONVERSATION)
    assert full_ids[: len(ids)] == ids and mask.index(1, len(ids) - 1) == len(ids)


def test_the_judge_asks_its_question_after_the_generation_prompt(models):
    judge = CausalLMJudge(str(models["qwen2"]), rubric="Which review is kinder?")
    text = judge.render(Question(prompt="How was the pasta?", first="Lovely.", second="Awful."))
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


DISHES = ["pasta", "soup", "pizza", "salad", "curry", "bread", "cake", "fish"]


def first_turn_logp(model_dir: Path, conversations) -> float:
    """Mean log-prob per token of the first assistant turn of each conversation, given the turns before it."""
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    items = [conversation_labels(tokenizer, c[:3]) for c in conversations]
    with torch.no_grad():
        sums, counts = labelled_logps(model, [i for i, _ in items], [m for _, m in items], tokenizer.pad_token_id)
    return (sums.sum() / counts.sum()).item()


def test_sft_on_messages_learns_the_earlier_assistant_turns_too(models, tmp_path):
    conversations = [
        [
            {"role": "user", "content": f"How was the {dish}?"},
            {"role": "assistant", "content": f"The {dish} was lovely, thank you."},
            {"role": "user", "content": "Anything else?"},
            {"role": "assistant", "content": "No."},
        ]
        for dish in DISHES
    ]
    as_messages = write_jsonl(tmp_path / "messages.jsonl", [{"messages": c} for c in conversations])
    # the same conversations as prompt + response: the earlier turns are context and are not trained
    as_prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": c[:-1], "response": c[-1]["content"]} for c in conversations]
    )
    common = dict(model=str(models["qwen2"]), max_steps=20, batch_size=4, lr=1e-2, val_fraction=0, seed=0)
    sft.run(SFTConfig(data=str(as_messages), output_dir=str(tmp_path / "all"), **common))
    sft.run(SFTConfig(data=str(as_prompts), output_dir=str(tmp_path / "last"), **common))
    before = first_turn_logp(models["qwen2"], conversations)
    all_turns = first_turn_logp(tmp_path / "all" / "model", conversations)
    last_turn = first_turn_logp(tmp_path / "last" / "model", conversations)
    # 5 seeds: before -7.1, all turns -2.6 to -2.8, last turn only -7.6
    assert all_turns > before + 3 and all_turns > last_turn + 3, (before, all_turns, last_turn)


def test_a_multi_turn_conversation_without_a_template_is_an_error_that_says_what_to_do(models, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": CONVERSATION}])
    config = SFTConfig(data=str(data), model=str(models["gpt2"]), output_dir=str(tmp_path / "out"), val_fraction=0)
    with pytest.raises(DataError, match=r"sft.jsonl: line 1: field 'messages': .*needs a chat template.*has none"):
        sft.run(config)


def test_a_single_turn_conversation_without_a_template_uses_the_transcript(models):
    tokenizer = load_tokenizer(models["gpt2"])
    ids, _ = Encoder(tokenizer, 64, 48).prompt_ids(CONVERSATION[:2])
    assert tokenizer.decode(ids) == "\n\nSystem: You write reviews.\n\nHuman: How was the pasta?\n\nAssistant:"


def test_a_conversation_the_template_refuses_is_a_data_error(models):
    tokenizer = load_tokenizer(models["gemma"])
    two_users = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi?"}, CONVERSATION[2]]
    with pytest.raises(DataError, match="sft.jsonl:3: the tokenizer's chat template refuses.*must alternate"):
        conversation_labels(tokenizer, two_users, where="sft.jsonl:3")


def test_a_template_that_is_not_prefix_consistent_is_refused(models):
    tokenizer = load_tokenizer(models["qwen2"])
    # renders an assistant turn differently once the conversation goes on (as templates that drop earlier reasoning)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: "
        "{% if m['role'] == 'assistant' and not loop.last %}(earlier){% else %}{{ m['content'] }}{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(DataError, match="data.jsonl:7: the tokenizer's chat template is not prefix-consistent"):
        conversation_labels(tokenizer, CONVERSATION, where="data.jsonl:7")


@pytest.mark.parametrize("arch", ["qwen2", "gemma"])  # the packed path and the padded one (forward.PACKABLE)
def test_the_sft_loss_is_the_nll_of_exactly_the_assistant_tokens(models, arch):
    tokenizer = load_tokenizer(models[arch])
    model = load_causal_lm(models[arch]).eval()
    examples = [SFTExample(prompt=CONVERSATION[:-1], response=CONVERSATION[-1]["content"], messages=CONVERSATION)]
    examples.append(SFTExample(prompt=CONVERSATION[:2], response=" Lovely."))  # prompt + response: the reply only
    items = sft.encode_examples(examples, Encoder(tokenizer, 256, 128))
    assert items[0] == conversation_labels(tokenizer, CONVERSATION)
    assert items[1] == conversation_labels(
        tokenizer, CONVERSATION[:2] + [{"role": "assistant", "content": " Lovely."}], True
    )
    with torch.no_grad():
        nll, count = sft.response_nll(model, items, tokenizer.pad_token_id)
        by_hand = 0.0
        for ids, mask in items:
            logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            by_hand -= sum(logps[j - 1, ids[j]].item() for j in range(1, len(ids)) if mask[j])
    assert count.item() == sum(sum(m) for _, m in items)
    assert nll.item() == pytest.approx(by_hand, rel=1e-5)


def test_an_opening_assistant_greeting_is_context(models):
    tokenizer = load_tokenizer(models["llama"])
    greeting = [{"role": "assistant", "content": "Hello! Ask me about food."}, *CONVERSATION[1:3]]
    ids, mask = conversation_labels(tokenizer, greeting)
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == "The pasta was lovely.<|eot_id|>"
