"""Conversations through the tokenizer's chat template: the token ids of a whole conversation and which of them the
assistant wrote.

Templates say nothing about where a turn's tokens are, so they are found by rendering the conversation prefix by
prefix: assistant turn k is the tokens of the conversation through turn k minus those of the conversation before it
with the generation prompt (`add_generation_prompt=True`: the role header the model is sampled after), i.e. the turn's
content and its end-of-turn token. Whitespace the template writes after the end-of-turn token (ChatML's and Gemma's
"\\n") is not the assistant's and is not trained; nor is an assistant turn that opens the conversation (it answers
nothing). Every prefix must be a prefix of the whole conversation's tokens; a template that renders earlier turns
differently once later ones follow (one that drops an earlier turn's reasoning, say) is refused with the turn where it
differs, as no mask would then be true.
"""

from __future__ import annotations

from ..errors import DataError
from .records import Message


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, messages: list[Message], generation_prompt: bool, where: str = "") -> str:
    """The template's text of `messages`; a template that refuses them (Gemma: roles must alternate) is a DataError."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as exc:
        raise DataError(
            f"{where or 'messages'}: the tokenizer's chat template refuses this conversation ({exc})"
        ) from None


def assistant_spans(tokenizer, messages: list[Message], where: str = "") -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the whole conversation as the template renders it, and the [start, end) span of each assistant
    turn in them (its content and end-of-turn token; see the module docstring)."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = encode(render(tokenizer, messages, False, where))
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant" or k == 0:
            continue  # an opening assistant turn (a greeting) answers nothing: context, not trained
        before = encode(render(tokenizer, messages[:k], True, where))
        through = encode(render(tokenizer, messages[: k + 1], False, where))
        for prefix, what in ((before, "before"), (through, "through")):
            if ids[: len(prefix)] != prefix:
                raise DataError(
                    f"{where or 'messages'}: the tokenizer's chat template is not prefix-consistent: the "
                    f"conversation {what} turn {k} (an assistant turn) renders to tokens the whole conversation does "
                    "not start with, so its assistant turns cannot be found; give a template that renders earlier "
                    "turns the same whatever follows, or train on single-turn records (prompt + response)"
                )
        end = len(through)
        while end > len(before) and not tokenizer.decode(ids[end - 1 : end]).strip():
            end -= 1  # the template's newline after the end-of-turn token
        if end > len(before):
            spans.append((len(before), end))
    return ids, spans


def conversation_labels(
    tokenizer, messages: list[Message], last_only: bool = False, where: str = ""
) -> tuple[list[int], list[int]]:
    """(token ids, label mask): 1 on every assistant turn's tokens (only the last turn's with `last_only`), 0 on the
    system and user turns and on the template's role headers."""
    ids, spans = assistant_spans(tokenizer, messages, where)
    if not spans:
        raise DataError(f"{where or 'messages'}: the tokenizer's chat template renders no assistant tokens to train on")
    if last_only:
        spans = spans[-1:]
    mask = [0] * len(ids)
    for start, end in spans:
        mask[start:end] = [1] * (end - start)
    return ids, mask
