"""AI judges (`rlhfkit judge`): a trained reward model, the embedded causal LM reading a rubric, and a real
OpenAI-compatible HTTP server started here (rule-based, position-biased, flaky, refusing). Each pair is asked in both
orders; the files it writes are read by `rlhfkit agreement`, `rlhfkit data validate` and `reward train`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlhfkit.config import JudgeConfig, RewardTrainConfig, build_config
from rlhfkit.data.records import PreferencePair, load_records, write_jsonl
from rlhfkit.errors import ConfigError, DataError, JudgeError
from rlhfkit.feedback.agreement import agreement_report, load_judgments
from rlhfkit.feedback.judge import (
    Candidate,
    CausalLMJudge,
    Question,
    Verdict,
    answer_token_ids,
    is_local_url,
    judge_both_orders,
    parse_verdict,
    summarize,
)
from rlhfkit.stages import judge as judge_stage
from rlhfkit.stages import reward

RLHFKIT = [sys.executable, "-m", "rlhfkit.cli"]

GOOD = [
    " It was wonderful.",
    " Lovely staff and a great experience, I would go back.",
    " Excellent, truly excellent and fun.",
    " The best one we tried all year, really good value.",
]
BAD = [
    " It was awful.",
    " Rude staff and a terrible experience, never again.",
    " Poor, boring and broken.",
    " The worst one we tried all year, sadly a waste of money.",
]
POSITIVE_WORDS = ("wonderful", "great", "excellent", "best", "lovely")


def review_pairs(subjects: list[str], whens: list[str], prefix: str) -> list[PreferencePair]:
    """Clearly separable pairs: a positive review continuation chosen over a negative one."""
    return [
        PreferencePair(
            prompt=f"We tried the {subject} {when}.",
            chosen=GOOD[(i + j) % 4],
            rejected=BAD[(i + 2 * j) % 4],
            id=f"{prefix}{i}-{j}",
            metadata={"gold_chosen": 0.8, "gold_rejected": -0.6},
        )
        for i, subject in enumerate(subjects)
        for j, when in enumerate(whens)
    ]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLHFKIT_NO_PROGRESS": "1"}
    return subprocess.run([*RLHFKIT, *args], capture_output=True, text=True, env=env, timeout=300)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def judge_config(**values) -> JudgeConfig:
    return build_config(JudgeConfig, values, source="test")


# ----------------------------------------------------------------------------------------------- a real chat server


@dataclass
class Reply:
    content: str = "A"
    status: int = 200
    delay: float = 0.0
    headers: dict = field(default_factory=dict)
    error: str = "something went wrong"


class ChatServer:
    """An OpenAI-compatible server on 127.0.0.1: POST /v1/chat/completions answered by `answer(user_text,
    request_number)`."""

    def __init__(self, answer):
        self.answer, self.requests, self.lock = answer, [], threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    number = len(server.requests)
                reply = (
                    server.answer(body["messages"][-1]["content"], number)
                    if self.path == "/v1/chat/completions"
                    else Reply(status=404, error=f"no route {self.path}")
                )
                time.sleep(reply.delay)
                payload = (
                    {
                        "id": f"c{number}",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.content},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                    if reply.status == 200
                    else {"error": {"message": reply.error, "type": "test"}}
                )
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    servers = []

    def start(answer) -> ChatServer:
        servers.append(ChatServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def sections(user_text: str) -> tuple[str, str]:
    match = re.search(r"Response A:\n(.*?)\n\nResponse B:\n(.*?)\n\nWhich response is better", user_text, re.DOTALL)
    assert match, user_text
    return match.group(1), match.group(2)


def positive_wins(user_text: str, number: int) -> Reply:
    """A judge that reads the responses: the positive review wins, whichever position it is in."""
    first, _ = sections(user_text)
    return Reply("**Verdict: A**" if any(w in first.lower() for w in POSITIVE_WORDS) else "Response B is better.")


def always_first(user_text: str, number: int) -> Reply:
    return Reply("A")


# ----------------------------------------------------------------------------------------------- verdict parsing


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("A", "A"),
        ("B", "B"),
        ("**B**", "B"),
        ('"A"', "A"),
        ("(B)", "B"),
        ("Response A", "A"),
        ("Option B", "B"),
        ("A. It is kinder.", "A"),
        ("B\nbecause it answers the question", "B"),
        ("Answer: A", "A"),
        ("The answer is B.", "B"),
        ("The better response is A.", "A"),
        ("Verdict: [[B]]", "B"),
        ("I prefer Response A.", "A"),
        ("Response B is better than Response A.", "B"),
        ("A good answer is B", "B"),
        ("Response A is clearer and more helpful.", "A"),
        ("Both could work, but my final answer: B", "B"),
        ("<think>Maybe A is better... no.</think>\nB", "B"),
        ("Tie", "tie"),
        ("It's a tie.", "tie"),
        ("Both are equally good.", "tie"),
        ("Final answer: tie", "tie"),
        ("Neither", "tie"),
        ("I cannot decide.", None),
        ("hmm", None),
        ("", None),
        ("Response A and Response B are both fine.", None),
    ],
)
def test_parse_verdict_rules(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_parse_verdict_with_other_labels():
    assert parse_verdict("2", ["1", "2"]) == "B"
    assert parse_verdict("The answer is 1.", ["1", "2"]) == "A"
    assert parse_verdict("A", ["1", "2"]) is None


def test_local_urls_need_no_key():
    assert (
        is_local_url("http://localhost:8000/v1")
        and is_local_url("http://127.0.0.1:1/v1")
        and is_local_url("http://192.168.1.5/v1")
    )
    assert not is_local_url("https://api.openai.com/v1")


# ----------------------------------------------------------------------------------------------- both orders


class ScriptedJudge:
    """A stand-in judge (the thing under test is the both-orders logic): the first shown wins, or the positive one."""

    def __init__(self, rule):
        self.rule, self.asked = rule, []

    def judge(self, questions):
        self.asked += questions
        return [Verdict(self.rule(q)) for q in questions]


def test_both_orders_cancel_position_bias():
    candidates = [Candidate(f"p{i}", "We tried the cafe.", GOOD[i % 4], BAD[i % 4]) for i in range(6)]
    candidates += [Candidate("flipped", "We tried the gym.", BAD[0], GOOD[0])]

    biased = ScriptedJudge(lambda q: "A")
    verdicts = judge_both_orders(biased, candidates, seed=3)
    assert len(biased.asked) == 14  # every pair twice
    assert {(q.first, q.second) for q in biased.asked[:2]} == {
        (candidates[0].a, candidates[0].b),
        (candidates[0].b, candidates[0].a),
    }
    assert all(v.choice == "tie" and not v.consistent for v in verdicts)
    summary = summarize(verdicts, known_labels=True)
    assert (
        summary["position_consistency"] == 0.0 and summary["tie_share"] == 1.0 and summary["first_shown_share"] == 1.0
    )
    assert summary["accuracy"] is None and summary["single_order_accuracy"] == 0.5
    assert {v.shown_first for v in verdicts} == {"a", "b"}  # the order asked first is drawn per pair

    reader = ScriptedJudge(lambda q: "A" if q.first in GOOD else "B")
    verdicts = judge_both_orders(reader, candidates, seed=3)
    assert [v.choice for v in verdicts] == ["a"] * 6 + ["b"]
    summary = summarize(verdicts, known_labels=True)
    assert summary["position_consistency"] == 1.0 and summary["tie_share"] == 0.0
    assert summary["accuracy"] == pytest.approx(6 / 7) and summary["first_shown_share"] == 0.5
    assert "accuracy" not in summarize(
        verdicts, known_labels=False
    )  # unlabelled candidates: nothing to be accurate against


# ----------------------------------------------------------------------------------------------- reward-model judge


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory) -> Path:
    """A tiny reward model trained on separable review pairs (the default backbone, 40 steps)."""
    root = tmp_path_factory.mktemp("judge_rm")
    train = review_pairs(
        ["restaurant", "hotel", "phone", "laptop", "cafe", "movie", "book", "gym"],
        ["last week", "yesterday", "a month ago", "over the holidays"],
        "t",
    )
    write_jsonl(root / "train.jsonl", train)
    reward.train(
        RewardTrainConfig(
            data=str(root / "train.jsonl"),
            output_dir=str(root / "rm"),
            max_steps=40,
            eval_every=10,
            log_every=10,
            batch_size=8,
            lr=3e-4,
            val_fraction=0.25,
            patience=0,
            seed=0,
        )
    )
    return root / "rm" / "model"


@pytest.fixture(scope="module")
def heldout_file(tmp_path_factory) -> Path:
    """Unseen prompts: 16 pairs labelled right, and 4 whose file label is reversed (the negative review is `chosen`)."""
    pairs = review_pairs(
        ["airline", "camera", "museum", "bakery", "spa"], ["this spring", "on Sunday", "in June", "last night"], "h"
    )
    for pair in pairs[:4]:
        pair.chosen, pair.rejected = pair.rejected, pair.chosen
        pair.metadata = {"gold_chosen": -0.6, "gold_rejected": 0.8}
    path = tmp_path_factory.mktemp("judge_data") / "heldout.jsonl"
    write_jsonl(path, pairs)
    return path


def test_reward_model_judge_labels_pairs_and_writes_files_others_read(reward_model_dir, heldout_file, tmp_path):
    out = tmp_path / "judge"
    summary = judge_stage.run(
        judge_config(kind="reward_model", model=str(reward_model_dir), data=str(heldout_file), output_dir=str(out))
    )

    assert summary["pairs"] == 20 and summary["judge"] == "judge:rm"
    assert summary["position_consistency"] == 1.0  # a reward model reads one response at a time
    assert summary["accuracy"] > 0.6  # chance is 0.5; the file itself is right on only 16 of 20 ...
    truly_right = sum(p.chosen in GOOD for p in load_records(out / "pairs.jsonl", "preference"))
    assert truly_right >= 18  # ... while the judge's winner is the positive review in (nearly) every pair

    judgments = rows(out / "judgments.jsonl")
    assert len(judgments) == 20
    first = judgments[0]
    assert first["annotator"] == "judge:rm" and first["annotator_kind"] == "ai" and first["shown_first"] in ("a", "b")
    assert set(first["verdicts"]) == {"a_first", "b_first"} and "reward_first" in first["details"]["a_first"]
    loaded = load_judgments(out / "judgments.jsonl")
    assert len(loaded) == 20 and {j.pair_id for j in loaded} == {p.id for p in load_records(heldout_file, "preference")}
    assert agreement_report(out / "judgments.jsonl")["label_counts"] == {
        k: v for k, v in summary["choices"].items() if v
    }

    judged = {p.id: p for p in load_records(out / "pairs.jsonl", "preference")}
    assert len(judged) == summary["pairs_written"] == 20 - summary["choices"]["tie"]
    reversed_ids = [f"h0-{j}" for j in range(4)]
    corrected = [judged[i] for i in reversed_ids if i in judged and not judged[i].metadata["judge_agrees_with_input"]]
    assert len(corrected) >= 3  # the judge puts the positive review back on top ...
    for pair in corrected:
        assert pair.chosen in GOOD and pair.metadata["gold_chosen"] == 0.8  # ... and the gold scores move with it
        assert pair.annotator == "judge:rm" and pair.metadata["judge"] == "judge:rm"
    assert json.loads((out / "judge.json").read_text())["accuracy"] == summary["accuracy"]

    result = run_cli("data", "validate", str(out / "pairs.jsonl"))
    assert result.returncode == 0 and f"{len(judged)} valid preference records" in result.stdout, result.stderr
    trained = reward.train(
        RewardTrainConfig(
            data=str(out / "pairs.jsonl"),
            output_dir=str(tmp_path / "rm2"),
            max_steps=2,
            eval_every=1,
            batch_size=4,
            val_fraction=0.25,
            seed=0,
        )
    )
    assert trained["train_pairs"] > 0


def test_tie_threshold_makes_close_calls_ties(reward_model_dir, heldout_file, tmp_path):
    summary = judge_stage.run(
        judge_config(
            kind="reward_model",
            model=str(reward_model_dir),
            data=str(heldout_file),
            output_dir=str(tmp_path),
            tie_threshold=1e6,
            max_pairs=4,
            name="rm",
        )
    )
    assert summary["pairs"] == 4 and summary["tie_share"] == 1.0 and summary["pairs_written"] == 0
    assert (tmp_path / "pairs.jsonl").read_text() == ""
    assert all(row["choice"] == "tie" and row["annotator"] == "judge:rm" for row in rows(tmp_path / "judgments.jsonl"))


def test_reward_model_judge_refuses_a_language_model(heldout_file, tmp_path):
    from rlhfkit.errors import ModelError

    with pytest.raises(ModelError, match="not a reward model"):
        judge_stage.run(
            judge_config(kind="reward_model", model="default", data=str(heldout_file), output_dir=str(tmp_path / "j"))
        )
    assert not (tmp_path / "j").exists()


# ----------------------------------------------------------------------------------------------- causal-LM judge


def test_causal_lm_judge_end_to_end_on_the_default(heldout_file, tmp_path):
    out = tmp_path / "judge"
    summary = judge_stage.run(
        judge_config(kind="causal_lm", model="default", data=str(heldout_file), output_dir=str(out), max_pairs=6)
    )
    assert summary["pairs"] == 6 and summary["judge"] == "judge:default"
    assert 0.0 <= summary["position_consistency"] <= 1.0 and 0.0 <= summary["tie_share"] <= 1.0
    assert summary["prompts_truncated"] >= 0 and summary["max_length"] <= 1024

    judgments = rows(out / "judgments.jsonl")
    assert len(judgments) == 6
    for row in judgments:
        logps = row["details"]["a_first"]
        assert set(logps) == {"logp_A", "logp_B"} and all(v < 0 for v in logps.values())
        expected = row["verdicts"]["a_first"] if row["verdicts"]["a_first"] == row["verdicts"]["b_first"] else "tie"
        assert row["choice"] == expected
    assert len(load_judgments(out / "judgments.jsonl")) == 6
    written = rows(out / "pairs.jsonl")
    assert len(written) == summary["pairs_written"] == 6 - summary["choices"]["tie"]
    if written:
        assert len(load_records(out / "pairs.jsonl", "preference")) == len(written)


def test_causal_lm_judge_prefers_by_the_answer_tokens(tmp_path):
    """The verdict follows log P("A") vs log P("B") at the answer position: read them back from the model by hand."""
    import torch

    judge = CausalLMJudge("default", rubric="Pick the better review.")
    a_ids, b_ids = answer_token_ids(judge.tokenizer, ["A", "B"])
    assert a_ids and b_ids and not set(a_ids) & set(b_ids)
    question = Question("We tried the cafe.", GOOD[0], BAD[0])
    verdict = judge.judge([question])[0]
    ids = torch.tensor([judge.encode(question)])
    with torch.no_grad():
        logps = torch.log_softmax(judge.model(input_ids=ids).logits[0, -1], -1)
    expected_a, expected_b = torch.logsumexp(logps[a_ids], 0).item(), torch.logsumexp(logps[b_ids], 0).item()
    assert verdict.detail["logp_A"] == pytest.approx(expected_a, abs=1e-4)
    assert verdict.detail["logp_B"] == pytest.approx(expected_b, abs=1e-4)
    assert verdict.position == ("A" if expected_a > expected_b else "B")
    assert judge.render(question).endswith("Which response is better? Answer A or B.\nAnswer:")


# --------------------------------------------------------------------------------------- OpenAI-compatible judge


def test_openai_judge_reads_the_responses(chat_server, heldout_file, tmp_path, monkeypatch):
    server = chat_server(positive_wins)
    monkeypatch.setenv("RLHFKIT_TEST_JUDGE_KEY", "sk-test")
    summary = judge_stage.run(
        judge_config(
            kind="openai",
            base_url=server.url,
            api_model="judge-1",
            api_key_env="RLHFKIT_TEST_JUDGE_KEY",
            data=str(heldout_file),
            output_dir=str(tmp_path),
            concurrency=4,
        )
    )
    assert summary["judge"] == "judge:judge-1" and summary["requests"] == 40 and summary["retries"] == 0
    assert summary["position_consistency"] == 1.0 and summary["tie_share"] == 0.0
    assert summary["accuracy"] == pytest.approx(
        16 / 20
    )  # the four reversed file labels are the judge's only "mistakes"
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "judge-1" and request["body"]["temperature"] == 0
    assert request["body"]["messages"][-1]["content"].startswith("You compare two responses")
    judged = load_records(tmp_path / "pairs.jsonl", "preference")
    assert len(judged) == 20 and all(p.chosen in GOOD for p in judged)
    assert rows(tmp_path / "judgments.jsonl")[0]["details"]["a_first"]["reply"] in (
        "**Verdict: A**",
        "Response B is better.",
    )


def test_openai_judge_position_bias_becomes_ties(chat_server, heldout_file, tmp_path):
    server = chat_server(always_first)
    summary = judge_stage.run(
        judge_config(
            kind="openai",
            base_url=server.url,
            api_model="lazy",
            data=str(heldout_file),
            output_dir=str(tmp_path),
            max_pairs=8,
        )
    )
    assert (
        summary["position_consistency"] == 0.0 and summary["tie_share"] == 1.0 and summary["first_shown_share"] == 1.0
    )
    assert summary["pairs_written"] == 0 and summary["ties_left_out"] == 8
    assert server.requests[0]["auth"] is None  # a local server and no key set: none sent


def test_openai_judge_retries_429_5xx_and_timeouts(chat_server, heldout_file, tmp_path):
    script = {
        1: Reply(status=500),
        2: Reply(status=429, headers={"Retry-After": "0"}),
        3: Reply(delay=3.5),
        4: Reply(status=503),
    }
    server = chat_server(lambda text, n: script.get(n) or positive_wins(text, n))
    summary = judge_stage.run(
        judge_config(
            kind="openai",
            base_url=server.url,
            api_model="m",
            data=str(heldout_file),
            output_dir=str(tmp_path),
            max_pairs=1,
            concurrency=1,
            retry_delay=0.01,
            timeout=1.5,
        )
    )
    assert summary["retries"] == 4 and summary["requests"] == 6
    assert summary["pairs"] == 1 and summary["choices"]["b"] == 1  # the first pair's file label is reversed


def test_openai_judge_gives_up_with_url_and_status(chat_server, heldout_file, tmp_path):
    server = chat_server(lambda text, n: Reply(status=503, error="overloaded"))
    config = judge_config(
        kind="openai",
        base_url=server.url,
        api_model="m",
        data=str(heldout_file),
        output_dir=str(tmp_path / "j"),
        max_pairs=1,
        concurrency=1,
        max_retries=2,
        retry_delay=0.01,
    )
    with pytest.raises(
        JudgeError, match=re.escape(f"POST {server.url}/chat/completions: HTTP 503 (overloaded) on all 3 attempts")
    ):
        judge_stage.run(config)
    assert len(server.requests) == 3
    assert not (tmp_path / "j" / "judgments.jsonl").exists()


def test_openai_judge_unparseable_replies_are_counted_ties(chat_server, heldout_file, tmp_path):
    server = chat_server(lambda text, n: Reply("I would rather not say."))
    summary = judge_stage.run(
        judge_config(
            kind="openai",
            base_url=server.url,
            api_model="m",
            data=str(heldout_file),
            output_dir=str(tmp_path),
            max_pairs=2,
        )
    )
    assert summary["unparseable"] == 4 and summary["unparseable_examples"][0] == "I would rather not say."
    assert summary["tie_share"] == 1.0


def test_openai_refusal_is_one_error_line_naming_url_and_status(chat_server, heldout_file, tmp_path):
    server = chat_server(lambda text, n: Reply(status=401, error="Incorrect API key provided"))
    result = run_cli(
        "judge",
        "kind=openai",
        f"base_url={server.url}",
        "api_model=m",
        f"data={heldout_file}",
        f"output_dir={tmp_path / 'j'}",
        "max_pairs=2",
        "concurrency=1",
    )
    line = one_line_error(result)
    assert f"{server.url}/chat/completions" in line and "HTTP 401" in line and "Incorrect API key provided" in line
    assert "$OPENAI_API_KEY" in line
    assert len(server.requests) == 1  # refused at once: not retried, and no further pair asked


def test_cli_judge_then_agreement(chat_server, heldout_file, tmp_path):
    server = chat_server(positive_wins)
    out = tmp_path / "judge"
    result = run_cli(
        "judge",
        "kind=openai",
        f"base_url={server.url}",
        "api_model=m",
        f"data={heldout_file}",
        f"output_dir={out}",
        "max_pairs=5",
    )
    assert result.returncode == 0, result.stderr
    printed = " ".join(result.stderr.split())  # the console wraps long lines
    assert "position-consistent 100.0%" in printed and "wrote 5 pairs" in printed
    assert {p.name for p in out.iterdir()} == {"judgments.jsonl", "pairs.jsonl", "judge.json", "config.yaml"}
    result = run_cli("agreement", str(out / "judgments.jsonl"))
    assert result.returncode == 0 and "judgments   5" in result.stdout, result.stderr
    result = run_cli("data", "validate", str(out / "pairs.jsonl"))
    assert result.returncode == 0 and "5 valid preference records" in result.stdout, result.stderr


# ----------------------------------------------------------------------------------------------- errors a user can make


def test_cli_missing_data_file(tmp_path):
    line = one_line_error(
        run_cli(
            "judge",
            "kind=openai",
            "base_url=http://127.0.0.1:9/v1",
            "api_model=m",
            f"data={tmp_path / 'nowhere.jsonl'}",
            f"output_dir={tmp_path / 'j'}",
        )
    )
    assert "nowhere.jsonl" in line and "file not found" in line
    assert not (tmp_path / "j").exists()


def test_cli_unknown_judge_kind(tmp_path):
    line = one_line_error(run_cli("judge", "kind=oracle", f"data={tmp_path / 'x.jsonl'}"))
    assert "key 'kind'" in line and "oracle" in line


def test_cli_missing_key_for_a_remote_endpoint(heldout_file, tmp_path):
    env_name = "RLHFKIT_TEST_UNSET_KEY"
    assert env_name not in os.environ
    line = one_line_error(
        run_cli(
            "judge",
            "kind=openai",
            "base_url=https://judge.example.invalid/v1",
            "api_model=m",
            f"api_key_env={env_name}",
            f"data={heldout_file}",
            f"output_dir={tmp_path / 'j'}",
        )
    )
    assert env_name in line and "api_key_env" in line and "not set" in line
    assert not (tmp_path / "j").exists()


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"kind": "reward_model"}, "kind reward_model needs model"),
        ({"kind": "openai", "api_model": "m"}, "kind openai needs base_url"),
        ({"kind": "openai", "base_url": "localhost:8000/v1", "api_model": "m"}, "must start with http"),
        ({"kind": "causal_lm", "model": "default", "answer_labels": ["A", "A"]}, "answer_labels"),
    ],
)
def test_config_checks(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        judge_config(data="pairs.jsonl", **values)


def test_bad_records_name_file_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = {"prompt": "We tried the cafe.", "chosen": GOOD[0], "rejected": BAD[0]}
    path.write_text(json.dumps({**good, "id": 1}) + "\n" + json.dumps({**good, "id": 1}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:2: field 'id': 1 is also the id at line 1"):
        judge_stage.load_candidates(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:2: field 'rejected': missing"):
        judge_stage.load_candidates(path)
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "chosen": GOOD[1]}) + "\n")
    assert [c.pair_id for c in judge_stage.load_candidates(path)[0]] == [
        "line-1",
        "line-3",
    ]  # as `rlhfkit agreement` names them


def test_rubric_file(tmp_path):
    with pytest.raises(ConfigError, match="rubric_file: .*missing.txt: file not found"):
        judge_stage.read_rubric(
            judge_config(kind="causal_lm", model="default", data="d.jsonl", rubric_file=str(tmp_path / "missing.txt"))
        )
    (tmp_path / "rubric.txt").write_text("Prefer the kinder review.\n")
    assert (
        judge_stage.read_rubric(
            judge_config(kind="causal_lm", model="default", data="d.jsonl", rubric_file=str(tmp_path / "rubric.txt"))
        )
        == "Prefer the kinder review."
    )
