"""From records to token ids and padded batches, with the explicit truncation rule.

Truncation rule (counted and reported, never silent): the prompt keeps its last `max_prompt_length`
tokens; then, if prompt + response exceed `max_length`, the response keeps its first tokens up to the
budget, and a cut response gets no EOS (the model must not learn to stop mid-sentence). A record whose
response budget is under 1 token, whose response has no token, or whose responses become identical once cut, is dropped,
counted and named (its place: line and id); training stages refuse settings that drop more than half of the records,
or all of them (TruncationReport.check names the first few). A kept record has at least one token per response.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import DataError
from .chat import conversation_labels
from .records import Message, PromptValue

# more records dropped than this share is an error, not a note: the settings leave no room for the responses
MAX_DROPPED_SHARE = 0.5
NAMED = 5  # dropped records named in the summary line and the error


def render_prompt(tokenizer, prompt: PromptValue) -> str:
    """Text of a prompt: plain text as is; messages through the tokenizer's chat template when it has one."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    # No template: the HH-RLHF transcript convention.
    turns = "".join(f"\n\n{m['role'].capitalize() if m['role'] != 'user' else 'Human'}: {m['content']}" for m in prompt)
    return f"{turns}\n\nAssistant:"


@dataclass
class TruncationReport:
    records: int = 0
    prompts_cut: int = 0
    responses_cut: int = 0
    dropped: int = 0
    dropped_at: list[str] = field(default_factory=list)  # the places of the first NAMED dropped records
    response_tokens: int = 0  # every response's tokens (with its EOS) before the cut, kept records only
    response_tokens_kept: int = 0

    def as_dict(self) -> dict:
        return {
            "records": self.records,
            "prompts_truncated": self.prompts_cut,
            "responses_truncated": self.responses_cut,
            "dropped": self.dropped,
            # of the kept records' response tokens (0 when none is kept)
            "response_tokens_cut_share": round(1 - self.response_tokens_kept / self.response_tokens, 4)
            if self.response_tokens
            else 0.0,
        }

    def drop(self, place: str | None) -> None:
        self.dropped += 1
        if place is not None and len(self.dropped_at) < NAMED:
            self.dropped_at.append(place)

    def named(self) -> str:
        """`line 1 (id 's0'), line 2 and 5 more`: the dropped records a message names."""
        more = self.dropped - len(self.dropped_at)
        return ", ".join(self.dropped_at) + (f" and {more} more" if more and self.dropped_at else "")

    def check(self, source: str, max_length: int, max_prompt_length: int) -> None:
        """Refuse settings that drop more than MAX_DROPPED_SHARE of the records, or all of them (nothing left to
        train on): they leave no room for the responses, and training on what is left would not be training on
        this data. The message names the first dropped records."""
        if self.records and self.dropped <= self.records * MAX_DROPPED_SHARE:
            return
        left = "nothing left to train on" if self.dropped == self.records else f"{self.records - self.dropped} left"
        named = f" ({self.named()})" if self.dropped_at else ""
        raise DataError(
            f"{source}: {self.dropped} of {self.records} records dropped by truncation{named}, {left} "
            f"(max_length={max_length}, max_prompt_length={max_prompt_length}: no room left for a response token, "
            f"or responses identical once cut); at most {MAX_DROPPED_SHARE:.0%} may be dropped: raise max_length or "
            "lower max_prompt_length"
        )

    def summary(self, max_length: int, max_prompt_length: int) -> str:
        named = f" ({self.named()})" if self.dropped_at else ""
        return (
            f"truncation (max_length={max_length}, max_prompt_length={max_prompt_length}): "
            f"{self.prompts_cut} of {self.records} prompts cut from the left, {self.responses_cut} responses cut "
            f"from the right ({self.as_dict()['response_tokens_cut_share']:.1%} of the response tokens), "
            f"{self.dropped} records dropped{named} (no room for a response, or responses identical once cut)"
        )


class Encoder:
    """Tokenises prompts and responses once, applying the truncation rule and counting what it cut."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int, add_eos: bool = True):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.add_eos = add_eos and tokenizer.eos_token_id is not None
        self.report = TruncationReport()
        self._prompt_cache: dict[str, list[int]] = {}

    def prompt_ids(self, prompt: PromptValue) -> tuple[list[int], bool]:
        text = render_prompt(self.tokenizer, prompt)
        ids = self._prompt_cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._prompt_cache[text] = ids
        if len(ids) > self.max_prompt_length:
            return ids[-self.max_prompt_length :], True
        return ids, False

    def full_response_ids(self, response: str) -> list[int]:
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id] if self.add_eos else ids

    def response_ids(self, response: str, budget: int) -> tuple[list[int], bool]:
        ids = self.full_response_ids(response)
        if len(ids) > budget:
            return ids[:budget], True
        return ids, False

    def encode(
        self, prompt: PromptValue, responses: list[str], place: str | None = None
    ) -> tuple[list[int], list[list[int]]] | None:
        """(prompt ids, one id list per response, each at least one token) or None when the record is dropped (no
        trainable token left); counts cuts, and names a dropped record by its `place` (records.record_place)."""
        self.report.records += 1
        p_ids, p_cut = self.prompt_ids(prompt)
        budget = self.max_length - len(p_ids)
        if budget < 1:
            self.report.drop(place)
            return None
        outs, any_cut, full = [], False, 0
        for response in responses:
            r_ids = self.full_response_ids(response)
            full += len(r_ids)
            any_cut |= len(r_ids) > budget
            outs.append(r_ids[:budget])
        if not all(outs) or (len(outs) > 1 and len({tuple(o) for o in outs}) < len(outs)):
            self.report.drop(place)  # no response token to train on, or responses that differ only past the cut
            return None
        self.report.prompts_cut += p_cut
        self.report.responses_cut += any_cut
        self.report.response_tokens += full
        self.report.response_tokens_kept += sum(len(o) for o in outs)
        return p_ids, outs

    def encode_conversation(
        self, messages: list[Message], last_only: bool = False, where: str = "", place: str | None = None
    ) -> tuple[list[int], list[int]] | None:
        """(token ids, label mask) of a conversation through the chat template (chat.conversation_labels: 1 on the
        assistant turns, or on the last one only), cut by the truncation rule: the tokens before the first trained one
        are the prompt and keep their last `max_prompt_length`, then the whole keeps its first `max_length` (a cut
        turn loses its end-of-turn token). None, counted as dropped (and named by `place`), when no trained token is
        left."""
        self.report.records += 1
        ids, mask = conversation_labels(self.tokenizer, messages, last_only, where)
        trained = sum(mask)
        first = mask.index(1)
        prompt_cut = first > self.max_prompt_length
        start = first - self.max_prompt_length if prompt_cut else 0
        response_cut = len(ids) - start > self.max_length
        ids, mask = ids[start : start + self.max_length], mask[start : start + self.max_length]
        if not any(mask):
            self.report.drop(place)
            return None
        self.report.prompts_cut += prompt_cut
        self.report.responses_cut += response_cut
        self.report.response_tokens += trained
        self.report.response_tokens_kept += sum(mask)
        return ids, mask


def pad_sequences(
    prompts: list[list[int]], responses: list[list[int]], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Batch of prompt+response: input_ids, attention_mask and response_mask (1 on response tokens)."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = max(lengths)
    n = len(prompts)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = p + r
        start = 0 if padding_side == "right" else width - len(seq)
        input_ids[i, start : start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, start : start + len(seq)] = 1
        response_mask[i, start + len(p) : start + len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "response_mask": response_mask}


def pad_left(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for generation."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        input_ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        attention[i, width - len(seq) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention}


def _first_fit(lengths: list[int], width: int) -> tuple[list[int], list[int], list[int]]:
    """First-fit decreasing into rows of `width`: (row of each sequence, its start, room left in each row)."""
    free: list[int] = []
    row, start = [0] * len(lengths), [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        r = next((r for r, room in enumerate(free) if room >= n), None)
        if r is None:
            r = len(free)
            free.append(width)
        row[i], start[i] = r, width - free[r]
        free[r] -= n
    return row, start, free


MAX_PACK_WIDTH = 2048  # rows are widened up to this (or the longest sequence, if longer)


def pack_width(lengths: list[int], attention_cost: float) -> int:
    """The row width that makes packing cheapest. Rows as wide as the longest sequence leave the last rows part
    empty; wider rows waste less, but every token of a row attends over the whole row (the block-diagonal mask
    hides, but does not skip, the other sequences' keys). Cost of a packing: rows * width * (1 + attention_cost *
    width), with attention_cost the attention work per token per key relative to the matmul work per token
    (`train.attention_cost`). Candidates: the longest length, and for each row count the narrowest width that could
    hold it (plus an eighth and a quarter of the longest, room for first-fit), up to 4x the longest and at most
    MAX_PACK_WIDTH (the attention mask grows with the square of the width)."""
    longest, total = max(lengths), sum(lengths)
    candidates = {longest}
    widest = min(4 * longest, max(longest, MAX_PACK_WIDTH))
    for rows in range(1, len(lengths) + 1):
        width = -(-total // rows)  # the narrowest `rows` rows could be
        if longest <= width <= widest:
            candidates.update(w for w in (width, width + longest // 8, width + longest // 4) if w <= widest)
    cost = lambda rows, width: rows * width * (1 + attention_cost * width)  # noqa: E731
    best, best_cost = longest, cost(len(_first_fit(lengths, longest)[2]), longest)
    # cheapest lower bound first (full rows); first-fit runs only where the bound can still win
    for width in sorted(candidates, key=lambda w: cost(-(-total // w), w)):
        if cost(-(-total // width), width) >= best_cost * 0.999:
            break
        c = cost(len(_first_fit(lengths, width)[2]), width)
        if c < best_cost * 0.999 or (c <= best_cost * 1.001 and width < best):
            best, best_cost = width, min(c, best_cost)
    return best


def pack_rows(sequences: list[list[int]], pad_id: int, attention_cost: float | None = None) -> dict:
    """Sequences laid end to end in rows (first-fit decreasing), so that the matmuls see almost no padding. Rows are
    as wide as the longest sequence, or, given `attention_cost`, as wide as `pack_width` finds cheapest. Position ids
    restart at every sequence; with no attention mask, transformers reads the restarts as sequence boundaries and
    attends only within each sequence. `row` and `start` say where sequence i lies; the padding at a row's end gets
    positions 0, 1, ... of its own and is never read."""
    lengths = [len(s) for s in sequences]
    width = max(lengths) if attention_cost is None else pack_width(lengths, attention_cost)
    row, start, free = _first_fit(lengths, width)
    input_ids = torch.full((len(free), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(free), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        input_ids[row[i], start[i] : start[i] + len(seq)] = torch.tensor(seq, dtype=torch.long)
        position_ids[row[i], start[i] : start[i] + len(seq)] = torch.arange(len(seq))
    for r, room in enumerate(free):
        position_ids[r, width - room :] = torch.arange(room)
    return {"input_ids": input_ids, "position_ids": position_ids, "row": row, "start": start}
