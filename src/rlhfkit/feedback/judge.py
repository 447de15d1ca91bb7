"""AI judges (RLAIF): label a pair of responses with a reward model, a causal LM reading a rubric, or any
OpenAI-compatible chat-completions endpoint.

A judge answers questions by position: shown `first` and `second`, it says "A" (the first), "B" (the second)
or "tie". `judge_both_orders` asks every pair twice, a-first and b-first, and keeps a verdict only when both
orders agree; when they disagree the judge was swayed by position, and the pair is a tie.

Verdict parsing of a free-text reply (`parse_verdict`), first rule that applies, labels matched case-sensitively:
1. the last explicit verdict: "answer", "verdict", "winner", "choice", "better" or "prefer(red)" followed by a
   label or "tie" (with only filler between: is, the, one, response, ":", "=", quotes, brackets, `**`), or a
   label followed by "is better", "is the better", "is preferred" or "wins" ("Response B is better than A" -> B);
2. the whole reply, stripped of markdown, quotes, brackets and punctuation, is a label, "Response <label>",
   or a tie phrase (tie, draw, equal, equally good, the same, neither, both, "both are equally good");
3. the reply starts with a label standing alone ("A.", "B:", "A)", "A" then a line break);
4. exactly one of "Response A" / "Response B" appears;
otherwise the reply is unparseable: counted, and a tie for that order.
Text inside <think>...</think> (reasoning models) is ignored.
"""

from __future__ import annotations

import ipaddress
import math
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..data.records import PromptValue
from ..errors import ConfigError, JudgeError


@dataclass
class Candidate:
    """Two responses to one prompt: `a` is the input file's chosen response, `b` its rejected one."""

    pair_id: str | int
    prompt: PromptValue
    a: str
    b: str


@dataclass
class Question:
    prompt: PromptValue
    first: str
    second: str


@dataclass
class Verdict:
    """One question's answer by position ("A", "B" or "tie") and what it was based on (scores or the reply)."""

    position: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairVerdict:
    pair_id: str | int
    choice: str  # "a", "b" or "tie" (the two orders disagreed, or both said tie)
    shown_first: str  # the order asked first: "a" (a shown first) or "b"
    a_first: str  # the a-first question's verdict, as "a" | "b" | "tie"
    b_first: str  # the b-first question's verdict, as "a" | "b" | "tie"
    details: dict[str, dict[str, Any]]

    @property
    def consistent(self) -> bool:
        return self.a_first == self.b_first


# ------------------------------------------------------------------------------------------ prompts and parsing


def prompt_text(prompt: PromptValue) -> str:
    """A prompt as plain text for a judging prompt; a conversation as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt.strip()
    return "\n".join(f"{m['role']}: {m['content'].strip()}" for m in prompt)


def judging_prompt(rubric: str, question: Question, labels: tuple[str, str] | list[str] = ("A", "B")) -> str:
    first, second = labels
    return (
        f"{rubric.strip()}\n\nPrompt:\n{prompt_text(question.prompt)}\n\nResponse "
        f"{first}:\n{question.first.strip()}\n\n"
        f"Response {second}:\n{question.second.strip()}\n\nWhich response is better? Answer {first} or {second}."
    )


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_TIE = re.compile(
    r"(?:it is |it s |its )?(?:a )?(?:tie|draw|neither|(?:the )?same|equal|equally good|both|both (?:are|responses "
    r"are) (?:equally \w+|equal|the same))"
)
_FILLER = r"(?:\s*(?:(?i:response|assistant|option|is|would|be|the|one)\b|[:=\-*\"'(\[]))*\s*"


def parse_verdict(reply: str, labels: tuple[str, str] | list[str] = ("A", "B")) -> str | None:
    """ "A", "B" or "tie" from a judge's reply by the rules in the module docstring; None when it cannot tell."""
    first, second = (re.escape(label) for label in labels)
    by_label = {labels[0]: "A", labels[1]: "B"}
    text = _THINK.sub(" ", reply or "").strip()
    pick = rf"({first}|{second}|(?i:tie))(?!\w)"
    explicit = [
        re.compile(rf"(?i:\b(?:final answer|answer|verdict|winner|choice|better|prefer(?:red)?)\b){_FILLER}{pick}"),
        re.compile(rf"(?<!\w)({first}|{second})[*\"')\]]*\s+(?i:is\s+(?:the\s+)?better|is\s+preferred|wins)\b"),
    ]
    matches = [m for pattern in explicit for m in pattern.finditer(text)]
    if matches:
        last = max(matches, key=lambda m: m.start(1)).group(1)
        return "tie" if last.lower() == "tie" else by_label[last]
    bare = " ".join(re.sub(r"[*_`\"'()\[\]{}.,:;!?]", " ", text).split())
    bare = re.sub(r"^(?i:response|assistant|option)\s+", "", bare)
    if bare in by_label:
        return by_label[bare]
    if _TIE.fullmatch(bare.lower()):
        return "tie"
    start = re.match(rf"[*\"'(\[]*({first}|{second})[*\"')\]]*(?:[.:)\-,]|\s*\n|$)", text)
    if start:
        return by_label[start.group(1)]
    named = {by_label[label] for label in labels if re.search(rf"(?i:response)\s+{re.escape(label)}(?!\w)", text)}
    if len(named) == 1:
        return named.pop()
    return None


def to_pair_choice(position: str, a_shown_first: bool) -> str:
    """A position verdict ("A" = the first shown) as a pair choice ("a" = the file's chosen response)."""
    if position == "tie":
        return "tie"
    picked_first = position == "A"
    return "a" if picked_first == a_shown_first else "b"


# ------------------------------------------------------------------------------------------ both orders


def judge_both_orders(judge, candidates: list[Candidate], seed: int = 0) -> list[PairVerdict]:
    """Ask each pair a-first and b-first (which one first is seeded); disagreeing orders make a tie."""
    rng = random.Random(seed)
    a_first_order = [rng.random() < 0.5 for _ in candidates]
    questions: list[Question] = []
    for candidate, a_goes_first in zip(candidates, a_first_order):
        ab = Question(candidate.prompt, candidate.a, candidate.b)
        ba = Question(candidate.prompt, candidate.b, candidate.a)
        questions += [ab, ba] if a_goes_first else [ba, ab]
    verdicts = judge.judge(questions)
    out = []
    for i, (candidate, a_goes_first) in enumerate(zip(candidates, a_first_order)):
        asked = verdicts[2 * i : 2 * i + 2]
        ab, ba = asked if a_goes_first else asked[::-1]
        a_first, b_first = to_pair_choice(ab.position, True), to_pair_choice(ba.position, False)
        out.append(
            PairVerdict(
                pair_id=candidate.pair_id,
                choice=a_first if a_first == b_first else "tie",
                shown_first="a" if a_goes_first else "b",
                a_first=a_first,
                b_first=b_first,
                details={"a_first": ab.detail, "b_first": ba.detail},
            )
        )
    return out


def summarize(verdicts: list[PairVerdict], known_labels: bool) -> dict[str, Any]:
    """Position consistency, tie share, first-position share and (with known labels, where a is right) accuracy."""
    n = len(verdicts)
    choices = {c: sum(v.choice == c for v in verdicts) for c in ("a", "b", "tie")}
    # every single-order verdict that named a winner: did it pick the response shown first?
    single = [(v.a_first, True) for v in verdicts if v.a_first != "tie"] + [
        (v.b_first, False) for v in verdicts if v.b_first != "tie"
    ]
    picked_first = sum((choice == "a") == a_shown_first for choice, a_shown_first in single)
    decided = choices["a"] + choices["b"]
    summary: dict[str, Any] = {
        "pairs": n,
        "choices": choices,
        "position_consistency": sum(v.consistent for v in verdicts) / n if n else None,
        "tie_share": choices["tie"] / n if n else None,
        "first_shown_share": picked_first / len(single) if single else None,
    }
    if known_labels:
        summary["accuracy"] = choices["a"] / decided if decided else None
        summary["decided_pairs"] = decided
        summary["single_order_accuracy"] = sum(choice == "a" for choice, _ in single) / len(single) if single else None
    return summary


# ------------------------------------------------------------------------------------------ local judges


def _progress(description: str, total: int):
    from ..console import progress_bar

    return progress_bar(description, total)


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 5)  # NaN is not JSON


def _position(difference: float, tie_threshold: float) -> str:
    if math.isnan(difference) or abs(difference) <= tie_threshold:
        return "tie"
    return "A" if difference > 0 else "B"


class RewardModelJudge:
    """Scores both responses with a reward model (saved by `rlhfkit reward train`); the higher reward wins. A reward
    model reads one response at a time, so it cannot be swayed by position: both orders always agree."""

    def __init__(
        self,
        model: str,
        head: int | str = 0,
        tie_threshold: float = 0.0,
        batch_size: int = 16,
        max_length: int = 1024,
        max_prompt_length: int = 512,
        ensemble_method: str = "mean",
        ensemble_coef: float = 0.5,
    ):
        from ..resolve import resolve_model_path
        from ..scoring import RewardModelScorer, require_reward_model

        require_reward_model(
            resolve_model_path(model),
            model,
            "give the model/ folder of `rlhfkit reward train`, or use kind=causal_lm for a language model",
        )
        self.scorer = RewardModelScorer(
            model, max_length, max_prompt_length, batch_size, ensemble_method, ensemble_coef
        )  # an ensemble directory: its members combined by ensemble_method
        head = self.scorer.check_head(head, "head")  # an index, or an objective's name
        self.tokenizer, self.model, self.encoder = self.scorer.tokenizer, self.scorer.model, self.scorer.encoder
        self.path, self.head, self.tie_threshold, self.batch_size = self.scorer.path, head, tie_threshold, batch_size

    def judge(self, questions: list[Question]) -> list[Verdict]:
        # each distinct (prompt, response) is scored once, whichever order it was shown in
        keys = list(dict.fromkeys((str(q.prompt), r) for q in questions for r in (q.first, q.second)))
        prompts = {str(q.prompt): q.prompt for q in questions}
        # a response with no room after truncation scores NaN: a tie
        with _progress("judge (reward model)", len(keys)) as advance:
            scores = self.scorer.score([prompts[p] for p, _ in keys], [r for _, r in keys], self.head, advance)
        score_of = dict(zip(keys, scores))
        out = []
        for q in questions:
            first, second = score_of[(str(q.prompt), q.first)], score_of[(str(q.prompt), q.second)]
            out.append(
                Verdict(
                    _position(first - second, self.tie_threshold),
                    {"reward_first": _rounded(first), "reward_second": _rounded(second)},
                )
            )
        return out

    def stats(self) -> dict[str, Any]:
        return {"truncation": self.encoder.encoder.report.as_dict()}


def answer_token_ids(tokenizer, labels: list[str] | tuple[str, str]) -> list[list[int]]:
    """For each label, the first token of the label as written and after a space ("A", " A"); a token both labels
    share (a bare space, say) is dropped, since it cannot tell them apart."""
    firsts = []
    for label in labels:
        ids = set()
        for variant in (label, " " + label):
            tokens = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if tokens:
                ids.add(tokens[0])
        firsts.append(ids)
    shared = firsts[0] & firsts[1]
    out = [sorted(ids - shared) for ids in firsts]
    if not all(out):
        raise ConfigError(
            f"answer_labels {list(labels)}: both labels start with the same token in this tokenizer; "
            "choose labels that differ in their first character"
        )
    return out


class CausalLMJudge:
    """Renders the judging prompt (rubric, prompt, both responses, the question) and compares the next-token
    log-probability of the two answer labels: log P(label) = logsumexp over the label's tokens ("A", " A")."""

    def __init__(
        self,
        model: str,
        rubric: str,
        labels: list[str] | tuple[str, str] = ("A", "B"),
        tie_threshold: float = 0.0,
        batch_size: int = 8,
        max_length: int = 1024,
    ):
        from ..models.loading import load_causal_lm, load_tokenizer
        from ..resolve import resolve_model_path

        self.path = resolve_model_path(model)
        self.tokenizer = load_tokenizer(self.path, padding_side="left")
        self.model = load_causal_lm(self.path).eval()
        context = getattr(self.model.config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, context)
        self.rubric, self.labels, self.tie_threshold, self.batch_size = rubric, tuple(labels), tie_threshold, batch_size
        self.label_ids = answer_token_ids(self.tokenizer, self.labels)
        self.truncated = 0

    def render(self, question: Question) -> str:
        text = judging_prompt(self.rubric, question, self.labels)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text + "\nAnswer:"

    def encode(self, question: Question) -> list[int]:
        ids = self.tokenizer(self.render(question), add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length:
            self.truncated += 1
            ids = ids[-self.max_length :]  # keep the end: the responses and the question
        return ids

    def judge(self, questions: list[Question]) -> list[Verdict]:
        import torch

        from ..data.tokenize import pad_left

        out = []
        with torch.no_grad(), _progress("judge (causal LM)", len(questions)) as advance:
            for start in range(0, len(questions), self.batch_size):
                chunk = questions[start : start + self.batch_size]
                batch = pad_left([self.encode(q) for q in chunk], self.tokenizer.pad_token_id)
                position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = self.model(**batch, position_ids=position_ids).logits[:, -1].float()
                logps = torch.log_softmax(logits, dim=-1)
                first = torch.logsumexp(logps[:, self.label_ids[0]], dim=-1)
                second = torch.logsumexp(logps[:, self.label_ids[1]], dim=-1)
                for lp_first, lp_second in zip(first.tolist(), second.tolist()):
                    out.append(
                        Verdict(
                            _position(lp_first - lp_second, self.tie_threshold),
                            {
                                f"logp_{self.labels[0]}": round(lp_first, 5),
                                f"logp_{self.labels[1]}": round(lp_second, 5),
                            },
                        )
                    )
                advance(len(chunk))
        return out

    def stats(self) -> dict[str, Any]:
        return {"prompts_truncated": self.truncated, "max_length": self.max_length}


# ------------------------------------------------------------------------------------------ OpenAI-compatible endpoint


def is_local_url(url: str) -> bool:
    """localhost, a loopback or a private-network address: servers there usually need no key."""
    host = urlparse(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


def _error_text(response) -> str:
    """The server's own error message when it sent one ({"error": {"message": ...}}), else the start of the body."""
    try:
        body = response.json()
        message = (
            body.get("error", {}).get("message")
            if isinstance(body.get("error"), dict)
            else body.get("error") or body.get("detail")
        )
        if message:
            return str(message)[:300]
    except (ValueError, AttributeError):
        pass
    return " ".join(response.text.split())[:300]


class _Stopped(Exception):
    """Raised inside a request that is abandoned because another one failed."""


class OpenAIJudge:
    """POSTs the judging prompt to BASE_URL/chat/completions (temperature 0) and parses the verdict from the reply.
    Timeouts, HTTP 429 and 5xx are retried with exponential backoff; any other failure stops with the URL and status."""

    def __init__(
        self,
        base_url: str,
        api_model: str,
        rubric: str,
        api_key: str | None = None,
        labels=("A", "B"),
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 5,
        retry_delay: float = 1.0,
        max_reply_tokens: int | None = 16,
        key_hint: str = "",
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_model, self.rubric, self.api_key, self.labels = api_model, rubric, api_key, tuple(labels)
        self.concurrency, self.timeout, self.max_retries, self.retry_delay = (
            concurrency,
            timeout,
            max_retries,
            retry_delay,
        )
        self.max_reply_tokens, self.key_hint = max_reply_tokens, key_hint
        self.requests = self.retries = 0
        self.unparseable: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set when one request failed for good: the others stop asking

    def body(self, question: Question) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.api_model,
            "temperature": 0,
            "messages": [{"role": "user", "content": judging_prompt(self.rubric, question, self.labels)}],
        }
        if self.max_reply_tokens:
            body["max_tokens"] = self.max_reply_tokens
        return body

    def post(self, client, body: dict[str, Any]) -> str:
        """The reply text; retries what may pass on a second try, raises JudgeError on the rest."""
        import httpx

        for attempt in range(self.max_retries + 1):
            response = None
            with self._lock:
                self.requests += 1
            try:
                response = client.post(self.url, json=body)
            except httpx.TimeoutException:
                problem = f"no reply within timeout={self.timeout:g}s"
            except httpx.ConnectError as exc:
                raise JudgeError(
                    f"POST {self.url}: cannot connect ({exc}); is the server running and base_url right?"
                ) from None
            except httpx.TransportError as exc:
                problem = f"connection failed ({exc.__class__.__name__}: {exc})"
            else:
                if response.is_success:
                    return self.reply_text(response)
                problem = f"HTTP {response.status_code} ({_error_text(response)})"
                if response.status_code != 429 and response.status_code < 500:
                    raise JudgeError(
                        f"POST {self.url}: HTTP {response.status_code} {response.reason_phrase}: "
                        f"{_error_text(response)}{self.hint(response.status_code)}"
                    )
            if attempt == self.max_retries:
                raise JudgeError(
                    f"POST {self.url}: {problem} on all {attempt + 1} attempts; the server is overloaded or down "
                    "(raise max_retries or timeout, or lower concurrency)"
                )
            with self._lock:
                self.retries += 1
            if self._stop.wait(self.delay(attempt, response)):
                raise _Stopped()
        raise AssertionError("unreachable")

    def delay(self, attempt: int, response) -> float:
        """Exponential backoff; a server's Retry-After (seconds) wins, capped at a minute."""
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                return min(60.0, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return self.retry_delay * 2**attempt

    def hint(self, status: int) -> str:
        if status in (401, 403):
            return f"; check the API key ({self.key_hint})" if self.key_hint else "; check the API key"
        if status == 404:
            return f"; check base_url (most servers want it to end in /v1) and api_model '{self.api_model}'"
        if status in (400, 422):
            return "; the server rejected the request: check api_model and max_reply_tokens (null leaves it out)"
        return ""

    def reply_text(self, response) -> str:
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(
                f"POST {self.url}: the reply is not a chat completion (no choices[0].message.content): "
                f"{' '.join(response.text.split())[:200]}"
            ) from None
        return content if isinstance(content, str) else ""

    def ask(self, client, question: Question) -> Verdict | None:
        """One question's verdict; None when another request already failed (its error is the one raised)."""
        if self._stop.is_set():
            return None
        try:
            reply = self.post(client, self.body(question))
        except _Stopped:
            return None
        except BaseException:
            self._stop.set()
            raise
        position = parse_verdict(reply, self.labels)
        if position is None:
            with self._lock:
                self.unparseable.append(reply)
            return Verdict("tie", {"reply": reply[:500], "unparseable": True})
        return Verdict(position, {"reply": reply[:500]})

    def judge(self, questions: list[Question]) -> list[Verdict]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._stop.clear()
        verdicts: list[Verdict] = [None] * len(questions)  # type: ignore[list-item]
        with (
            httpx.Client(timeout=self.timeout, headers=headers) as client,
            ThreadPoolExecutor(self.concurrency) as pool,
            _progress(f"judge ({self.api_model})", len(questions)) as advance,
        ):
            futures = {pool.submit(self.ask, client, q): i for i, q in enumerate(questions)}
            try:
                for future in as_completed(futures):
                    verdicts[futures[future]] = future.result()
                    advance()
            except BaseException:
                self._stop.set()
                for future in futures:
                    future.cancel()  # queued questions are dropped; the ones in flight end at their next step
                raise
        return verdicts

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "unparseable": len(self.unparseable),
            "unparseable_examples": [r[:200] for r in self.unparseable[:5]],
        }
