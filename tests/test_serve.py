"""`rlhfkit serve`, driven as its users drive it: the real `openai` client against real gateway processes on
127.0.0.1. Two gateways are shared by the module: `upstream` (the embedded default model) and `gateway`, whose routes
are the default model (`fast`), a run root with a registry of two checkpoints (`rlhf`, hot-reloaded), an A/B split
and a forward to `upstream` (`remote`). A third one is killed with SIGKILL under load.

Checked: chat and completions, streaming and not, every answer in the audit log with its tokens; /metrics parsed by
prometheus-client; 429 with Retry-After; hostile requests answered 4xx with a message naming what is wrong; routing
by header, key tier, risk check and split; forwarding; feedback; hot reload after a rollback with no failed request;
`rlhfkit serve log` and `keys`; and no acknowledged response lost to kill -9.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rlhfkit.cli import main
from rlhfkit.evaluate.gate import GateResult
from rlhfkit.evaluate.registry import Registry, update_current_link
from rlhfkit.models.tiny import build_tiny
from rlhfkit.resolve import resolve_model_path
from rlhfkit.serve import store
from rlhfkit.serve.app import free_port, serve_in_background

PASSED = GateResult(rows=[], passed=True)


def start(servers: list[tuple]) -> list[tuple]:
    """Start several gateways at once (their model loads overlap); [(process, base URL)]."""
    with ThreadPoolExecutor(len(servers)) as pool:
        return list(pool.map(lambda args: serve_in_background(*args), servers))


def stop(process) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except Exception:
            process.kill()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    # a run root with two passing checkpoints: a copy of the default model (A), then a tiny Llama with a chat template
    # (B, current)
    runs = root / "runs"
    first = shutil.copytree(resolve_model_path("default"), runs / "a-default")
    second = build_tiny("llama", runs / "b-llama")
    registry = Registry(runs)
    for path in (first, second):
        registry.register(path, gate=PASSED)
        update_current_link(runs, str(path.resolve()))

    up_db, gw_db = str(root / "upstream.sqlite"), str(root / "gateway.sqlite")
    up_store, gw_store = store.open_store(up_db), store.open_store(gw_db)
    upstream_key = store.add_key(up_store, "gateway")
    keys = {
        "basic": store.add_key(gw_store, "basic"),
        "premium": store.add_key(gw_store, "premium", tier="premium"),
        "tight": store.add_key(gw_store, "tight", requests="2/minute"),
        "admin": store.add_key(gw_store, "admin", admin=True),
        "other": store.add_key(gw_store, "other"),
    }
    up_store.close()

    up_port = free_port()
    (root / "upstream.yaml").write_text(yaml.safe_dump({"db": up_db, "routes": {"fast": {"model": "default"}}}))
    config = {
        "db": gw_db,
        "routes": {
            "fast": {"model": "default"},
            "rlhf": {"model": str(runs)},
            "ab": {"split": {"a": "fast", "b": "rlhf", "share_b": 0.5, "by": "request"}},
            "remote": {
                "upstream": f"http://127.0.0.1:{up_port}/v1",
                "upstream_model": "fast",
                "upstream_key_env": "UPSTREAM_KEY",
            },
        },
        "default_route": "fast",
        "routing": {"tiers": {"premium": "rlhf"}, "risk": "rlhfkit.evaluate.safety:is_unsafe", "risk_route": "rlhf"},
        "poll_seconds": 0.2,
        "limits": {"requests": "10000/minute", "tokens": "10000000/minute", "max_tokens": 64},
        "batching": {"max_batch": 8, "wait_ms": 10},
        "threads": 1,
    }
    (root / "gateway.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "UPSTREAM_KEY": upstream_key}
    (up, up_base), (gw, gw_base) = start(
        [(root / "upstream.yaml", ["threads=1"], up_port), (root / "gateway.yaml", [], None, env)]
    )
    try:
        yield {
            "root": root,
            "runs": runs,
            "checkpoints": (str(first.resolve()), str(second.resolve())),
            "base": gw_base,
            "up_base": up_base,
            "db": gw_store,
            "up_db": up_db,
            "keys": keys,
        }
    finally:
        stop(gw)
        stop(up)
        gw_store.close()


def client(world, key="basic") -> openai.OpenAI:
    return openai.OpenAI(base_url=world["base"] + "/v1", api_key=world["keys"][key], max_retries=0, timeout=60)


def post(world, path: str, body, key: str | None = "basic", headers=None, **kwargs) -> httpx.Response:
    sent = {"Authorization": f"Bearer {world['keys'][key]}"} if key else {}
    return httpx.post(world["base"] + path, json=body, headers={**sent, **(headers or {})}, timeout=60, **kwargs)


def logged(world, response_id: str) -> store.Entry:
    entry = store.get_entry(world["db"], response_id)
    assert entry is not None, f"{response_id} is not in the audit log"
    return entry


# ------------------------------------------------------------------------------------------- the OpenAI API


def test_chat_and_completions_streaming_and_not_through_the_openai_client(world):
    api = client(world)
    assert {"auto", "fast", "rlhf", "ab", "remote"} <= {m.id for m in api.models.list()}

    chat = api.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "Tell me about the hotel."}], max_tokens=12
    )
    text = chat.choices[0].message.content
    assert chat.id.startswith("chatcmpl-") and text and chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens <= 12 and chat.usage.prompt_tokens > 0
    entry = logged(world, chat.id)
    assert entry.response == text and entry.route == "fast" and entry.checkpoint == "default"
    assert entry.prompt == [{"role": "user", "content": "Tell me about the hotel."}]
    assert entry.prompt_text.endswith("\n\nHuman: Tell me about the hotel.\n\nAssistant:")  # no chat template: plain
    assert len(entry.token_ids) == chat.usage.completion_tokens == entry.completion_tokens
    assert entry.key_name == "basic" and entry.status == "ok" and entry.latency_ms > 0 and entry.ttft_ms > 0

    pieces, ids = [], set()
    for part in api.chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "And the food?"}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    ):
        ids.add(part.id)
        if part.choices and part.choices[0].delta.content:
            pieces.append(part.choices[0].delta.content)
        if part.usage:
            usage = part.usage
    assert len(ids) == 1 and len(pieces) > 1  # token by token
    entry = logged(world, ids.pop())  # committed before [DONE]
    assert entry.stream and entry.response == "".join(pieces) and entry.completion_tokens == usage.completion_tokens

    completion = api.completions.create(model="fast", prompt="The pasta was", max_tokens=10, temperature=0)
    again = api.completions.create(model="fast", prompt="The pasta was", max_tokens=10, temperature=0)
    assert completion.choices[0].text == again.choices[0].text  # temperature 0: greedy
    assert logged(world, completion.id).prompt_text == "The pasta was"
    streamed = "".join(
        part.choices[0].text
        for part in api.completions.create(
            model="fast", prompt="The pasta was", max_tokens=10, temperature=0, stream=True
        )
    )
    assert streamed == completion.choices[0].text


def test_chat_prompts_use_the_tokenizers_chat_template_where_it_has_one(world):
    response = post(world, "/v1/chat/completions", {"model": "rlhf", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200
    assert logged(world, response.json()["id"]).prompt_text == (  # Llama-3's template, as the tiny Llama ships it
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_concurrent_requests_are_batched_together(world):
    api = client(world)
    with ThreadPoolExecutor(8) as pool:
        texts = list(
            pool.map(
                lambda i: api.completions.create(model="fast", prompt=f"Review {i}:", max_tokens=8).choices[0].text,
                range(8),
            )
        )
    assert all(isinstance(t, str) for t in texts)
    batch = metric(world, "rlhfkit_serve_batch_size", {"checkpoint": "default"})
    assert batch["_sum"] / batch["_count"] > 1  # some batches held several requests


def metric(world, name: str, labels: dict) -> dict[str, float]:
    """Samples of one metric family whose labels include `labels`, summed by sample suffix (_total, _sum, ...)."""
    text = httpx.get(world["base"] + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name.removesuffix("_total"):
            continue
        for sample in family.samples:
            if labels.items() <= sample.labels.items() and "le" not in sample.labels:
                suffix = sample.name[len(family.name) :]
                out[suffix] = out.get(suffix, 0.0) + sample.value
    return out


def test_metrics_count_requests_tokens_latency_and_first_tokens_per_route(world):
    api = client(world)
    before = metric(world, "rlhfkit_serve_requests_total", {"route": "fast", "status": "ok"}).get("_total", 0)
    api.completions.create(model="fast", prompt="Metrics", max_tokens=4)
    list(api.completions.create(model="fast", prompt="Metrics", max_tokens=4, stream=True))
    after = metric(world, "rlhfkit_serve_requests_total", {"route": "fast", "status": "ok"})["_total"]
    assert after == before + 2
    labels = {"route": "fast", "checkpoint": "default"}
    assert metric(world, "rlhfkit_serve_tokens_total", {**labels, "kind": "completion"})["_total"] >= 2
    assert metric(world, "rlhfkit_serve_request_seconds", labels)["_count"] >= 2
    assert metric(world, "rlhfkit_serve_time_to_first_token_seconds", labels)["_count"] >= 2


def test_a_stream_whose_client_goes_away_stops_generating_and_is_logged_as_cancelled(world):
    body = {"model": "fast", "prompt": "Leave early", "max_tokens": 64, "stream": True, "temperature": 0}
    headers = {"Authorization": f"Bearer {world['keys']['basic']}"}
    with httpx.stream("POST", world["base"] + "/v1/completions", json=body, headers=headers, timeout=30) as response:
        first = json.loads(next(response.iter_lines())[6:])  # one token, then hang up
    deadline = time.time() + 10
    while store.get_entry(world["db"], first["id"]) is None and time.time() < deadline:
        time.sleep(0.05)
    entry = logged(world, first["id"])
    assert entry.status == "cancelled" and entry.completion_tokens < 64


# ------------------------------------------------------------------------------------------- limits and refusals


def test_a_key_over_its_request_limit_gets_429_with_retry_after(world):
    api = client(world, "tight")
    for _ in range(2):
        api.completions.create(model="fast", prompt="Once", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as refused:
        api.completions.create(model="fast", prompt="Once", max_tokens=1)
    retry = int(refused.value.response.headers["Retry-After"])
    assert 0 < retry <= 60
    assert "rate limit" in refused.value.message
    assert metric(world, "rlhfkit_serve_rate_limited_total", {"limit": "requests"})["_total"] >= 1
    client(world, "basic").completions.create(model="fast", prompt="Others", max_tokens=1)  # other keys unaffected


HOSTILE = [
    # (body, headers, status, words the message must contain)
    (b"{not json", {"content-type": "application/json"}, 400, "not valid JSON"),
    (b"[1, 2]", {"content-type": "application/json"}, 422, "body"),
    (b'{"model": "fast", "prompt": "x"}', {"content-type": "text/plain"}, 400, "Content-Type: application/json"),
    ({"model": "fast", "prompt": "x", "max_tokens": -5}, {}, 422, "max_tokens"),
    ({"model": "fast", "prompt": "x", "max_tokens": "ten"}, {}, 422, "max_tokens"),
    ({"model": "fast", "prompt": "x", "max_tokens": 100000}, {}, 400, "cap of 64"),
    ({"model": "fast", "prompt": 12}, {}, 422, "prompt"),
    ({"model": "fast", "prompt": "x", "temperature": 9}, {}, 422, "temperature"),
    ({"model": "gpt-17", "prompt": "x"}, {}, 404, "model 'gpt-17' does not exist"),
    ({"prompt": "x"}, {}, 422, "model"),
    ({"model": "fast", "prompt": "word " * 400, "max_tokens": 10}, {}, 400, "context of 256 tokens"),
    ({"model": "fast", "prompt": ""}, {}, 400, "empty"),
    ({"model": "fast", "prompt": "x", "stop": ["."]}, {}, 400, "stop"),
    ({"model": "fast", "prompt": "x", "n": 3}, {}, 400, "n="),
    ({"model": "fast", "prompt": "x"}, {"X-Rlhfkit-Route": "nowhere"}, 404, "'nowhere' is not a route"),
    # a lone surrogate is valid JSON (scraped text has them) but not Unicode a tokenizer takes
    (b'{"model": "fast", "prompt": "p \\ud800 x"}', {"content-type": "application/json"}, 422, "unpaired surrogate"),
]


@pytest.mark.parametrize("body,headers,status,words", HOSTILE)
def test_malformed_requests_get_a_4xx_that_says_what_is_wrong(world, body, headers, status, words):
    sent = {"Authorization": f"Bearer {world['keys']['basic']}", **headers}
    if isinstance(body, bytes):
        response = httpx.post(world["base"] + "/v1/completions", content=body, headers=sent, timeout=30)
    else:
        response = httpx.post(world["base"] + "/v1/completions", json=body, headers=sent, timeout=30)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_chat_refusals_keys_and_sizes(world):
    chat = "/v1/chat/completions"
    assert post(world, chat, {"model": "fast", "messages": []}).status_code == 422
    wrong_type = post(world, chat, {"model": "fast", "messages": [{"role": "user", "content": 5}]})
    assert wrong_type.status_code == 422 and "messages.0.content" in wrong_type.json()["error"]["message"]
    bad_role = post(world, chat, {"model": "fast", "messages": [{"role": "boss", "content": "x"}]})
    assert bad_role.status_code == 422 and "messages.0.role" in bad_role.json()["error"]["message"]
    too_many = post(world, chat, {"model": "fast", "messages": [{"role": "user", "content": "x"}] * 65})
    assert too_many.status_code == 400 and "over the limit of 64" in too_many.json()["error"]["message"]
    huge = post(world, chat, {"model": "fast", "messages": [{"role": "user", "content": "x" * 300_000}]})
    assert huge.status_code == 413 and "max_body_bytes" in huge.json()["error"]["message"]
    body = {"model": "fast", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    missing = post(world, chat, body, key=None)
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    wrong = httpx.post(world["base"] + chat, json=body, headers={"Authorization": "Bearer rk-guess"}, timeout=10)
    assert wrong.status_code == 401 and "unknown" in wrong.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=world["base"] + "/v1", api_key="rk-guess", max_retries=0).models.list()
    assert post(world, chat, body).status_code == 200  # still up and answering


# ------------------------------------------------------------------------------------------- routing


def route_of(world, body: dict, key="basic", headers=None) -> str:
    response = post(world, "/v1/completions", {"prompt": "Route me", "max_tokens": 1, **body}, key, headers)
    assert response.status_code == 200, response.text
    assert response.headers["X-Rlhfkit-Route"] == response.json()["model"] == logged(world, response.json()["id"]).route
    return response.headers["X-Rlhfkit-Route"]


def test_requests_are_routed_by_header_model_tier_risk_and_split(world):
    assert route_of(world, {"model": "auto"}) == "fast"  # default_route
    assert route_of(world, {"model": "auto"}, key="premium") == "rlhf"  # key tier
    assert route_of(world, {"model": "fast"}, key="premium") == "fast"  # an explicit model beats the tier
    assert route_of(world, {"model": "fast"}, headers={"X-Rlhfkit-Route": "rlhf"}) == "rlhf"  # the header beats all
    risky = {"model": "auto", "prompt": "You are worthless scum, shut up"}
    assert route_of(world, risky) == "rlhf"  # the risk check
    routes = {}
    for i in range(16):
        request = {"X-Request-Id": f"req-{i}"}
        routes[i] = route_of(world, {"model": "ab"}, headers=request)
        assert route_of(world, {"model": "ab"}, headers=request) == routes[i]  # the same request id, the same side
    assert set(routes.values()) == {"fast", "rlhf"}


def test_an_upstream_route_forwards_and_passes_streams_through(world):
    api = client(world)
    answer = api.chat.completions.create(
        model="remote", messages=[{"role": "user", "content": "Forward me"}], max_tokens=8
    )
    entry = logged(world, answer.id)
    assert entry.route == "remote" and entry.checkpoint.startswith(world["up_base"])
    assert entry.response == answer.choices[0].message.content and answer.usage.completion_tokens >= 1
    upstream_log = store.window(
        world["up_db"], datetime.now(timezone.utc) - timedelta(minutes=5), datetime.now(timezone.utc)
    )
    assert answer.choices[0].message.content in [row["response"] for row in upstream_log]  # the upstream answered it

    parts = list(api.completions.create(model="remote", prompt="Stream through", max_tokens=8, stream=True))
    text = "".join(p.choices[0].text for p in parts if p.choices)
    assert len({p.id for p in parts}) == 1 and logged(world, parts[0].id).response == text


# ------------------------------------------------------------------------------------------- feedback


def test_feedback_thumbs_and_choices_are_stored_against_the_logged_response(world):
    started = datetime.now(timezone.utc)
    first = post(world, "/v1/completions", {"model": "fast", "prompt": "Feedback A", "max_tokens": 3}).json()["id"]
    second = post(world, "/v1/completions", {"model": "rlhf", "prompt": "Feedback A", "max_tokens": 3}).json()["id"]
    thumbs = post(world, "/v1/feedback", {"response_id": first, "rating": "up", "text": "nice"})
    assert thumbs.status_code == 201 and thumbs.json()["kind"] == "thumbs"
    choice = post(world, "/v1/feedback", {"chosen": second, "rejected": first})
    assert choice.status_code == 201

    rows = {row["id"]: row for row in store.window(world["db"], started, datetime.now(timezone.utc))}
    assert rows[first]["feedback"][0] == {
        **rows[first]["feedback"][0],
        "kind": "thumbs",
        "rating": "up",
        "text": "nice",
    }
    assert {"kind": "choice", "chosen": second, "rejected": first}.items() <= rows[second]["feedback"][0].items()
    assert rows[first]["prompt"] == "Feedback A" and len(rows[first]["feedback"]) == 2

    unknown = post(world, "/v1/feedback", {"response_id": "chatcmpl-nope", "rating": "up"})
    assert unknown.status_code == 404 and "response_id" in unknown.json()["error"]["message"]
    assert post(world, "/v1/feedback", {"response_id": first, "rating": "up"}, key="other").status_code == 404
    bad = post(world, "/v1/feedback", {"response_id": first, "rating": "meh"})
    assert bad.status_code == 422 and "rating" in bad.json()["error"]["message"]
    half = post(world, "/v1/feedback", {"chosen": first})
    assert half.status_code == 422 and "rejected" in half.json()["error"]["message"]


# ------------------------------------------------------------------------------------------- hot reload


def test_hot_reload_after_a_rollback_fails_no_request(world):
    first, second = world["checkpoints"]
    results: list[tuple[int, str]] = []
    stop_event = threading.Event()

    def hammer():
        with httpx.Client(timeout=60) as http:
            while not stop_event.is_set():
                response = http.post(
                    world["base"] + "/v1/completions",
                    json={"model": "rlhf", "prompt": "During the switch", "max_tokens": 6},
                    headers={"Authorization": f"Bearer {world['keys']['basic']}"},
                )
                results.append((response.status_code, response.headers.get("X-Rlhfkit-Checkpoint", "")))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        while len(results) < 8:
            time.sleep(0.05)
        assert {cp for _, cp in results} == {second}
        rolled_back = Registry(world["runs"]).rollback()  # what `rlhfkit rollback` does
        update_current_link(world["runs"], rolled_back.path)
        deadline = time.time() + 60
        while not any(cp == first for _, cp in results) and time.time() < deadline:
            time.sleep(0.05)
        seen_new = len(results)
        while len(results) < seen_new + 8:
            time.sleep(0.05)
    finally:
        stop_event.set()
        for thread in threads:
            thread.join(timeout=60)
    assert [status for status, _ in results if status != 200] == []  # no request failed during the switch
    assert results[-1][1] == first and {cp for _, cp in results} == {first, second}
    assert metric(world, "rlhfkit_serve_reloads_total", {"route": "rlhf"})["_total"] >= 1

    # the admin endpoint reloads at once (nothing changed: nothing switched); other keys may not
    reload = post(world, "/admin/reload", None, key="admin")
    assert reload.status_code == 200 and reload.json()["routes"]["rlhf"] == first and reload.json()["switched"] == []
    assert post(world, "/admin/reload", None, key="basic").status_code == 403


# ------------------------------------------------------------------------------------------- the CLI


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["rlhfkit", *args])
    with pytest.raises(SystemExit) as stop_:
        main()
    captured = capsys.readouterr()
    return stop_.value.code or 0, captured.out, captured.err


def test_serve_log_filters_and_prints_json_lines_or_a_table(world, monkeypatch, capsys):
    response = post(world, "/v1/completions", {"model": "rlhf", "prompt": "For the log", "max_tokens": 2}).json()
    db = str(world["root"] / "gateway.sqlite")
    code, out, _ = run_cli(monkeypatch, capsys, "serve", "log", "--db", db, "--route", "rlhf", "--format", "json")
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert code == 0 and rows[-1]["id"] == response["id"] and {r["route"] for r in rows} == {"rlhf"}
    assert rows[-1]["prompt"] == "For the log" and rows[-1]["token_ids"]
    code, out, _ = run_cli(monkeypatch, capsys, "serve", "log", "--db", db, "--key", "premium", "--limit", "2")
    assert code == 0 and len(out.strip().splitlines()) == 3 and "premium" in out  # header and two rows
    code, out, _ = run_cli(monkeypatch, capsys, "serve", "log", "--db", db, "--since", "2999-01-01")
    assert out.strip() == "no entries"
    code, _, err = run_cli(monkeypatch, capsys, "serve", "log", "--db", db, "--since", "yesterday-ish")
    assert code == 2 and "--since 'yesterday-ish'" in err


def test_serve_keys_add_prints_the_key_once_and_stores_its_hash(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "keys.sqlite")
    code, out, _ = run_cli(monkeypatch, capsys, "serve", "keys", "add", "dana", "--tier", "rlhf", "--db", db)
    key = out.strip().splitlines()[-1]
    assert code == 0 and key.startswith("rk-")
    database = store.open_store(db)
    assert store.find_key(database, key).tier == "rlhf"
    assert key.encode() not in (tmp_path / "keys.sqlite").read_bytes()
    code, out, _ = run_cli(monkeypatch, capsys, "serve", "keys", "list", "--db", db)
    assert "dana" in out and key not in out
    code, _, err = run_cli(monkeypatch, capsys, "serve", "keys", "add", "dana", "--db", db)
    assert code == 2 and "exists already" in err
    code, _, err = run_cli(monkeypatch, capsys, "serve", "keys", "add", "eve", "--requests", "lots", "--db", db)
    assert code == 2 and "--requests" in err
    run_cli(monkeypatch, capsys, "serve", "keys", "revoke", "dana", "--db", db)
    assert store.find_key(database, key) is None
    database.close()
    code, _, err = run_cli(monkeypatch, capsys, "serve", "routes.x.model=default", "routes.x.upstream=http://a/v1")
    assert code == 2 and "exactly one of model, upstream or split" in err


# ------------------------------------------------------------------------------------------- kill -9


def test_sigkill_under_load_loses_no_acknowledged_response(tmp_path):
    db = str(tmp_path / "kill.sqlite")
    database = store.open_store(db)
    key = store.add_key(database, "load")
    database.close()
    process, base = serve_in_background(None, [f"db={db}", "model=default", "threads=1"])
    acks: list[tuple[str, str]] = []  # (response id, text) of every answer the client received whole
    halt = threading.Event()

    def streamed(http: httpx.Client, i: int) -> tuple[str, str] | None:
        """(id, text) of a stream that ended with [DONE], None for one cut short."""
        body = {"model": "main", "prompt": f"Kill {i}", "max_tokens": 8, "stream": True}
        parts = []
        with http.stream("POST", "/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    return parts[0]["id"], "".join(p["choices"][0]["text"] for p in parts if p["choices"])
                if line.startswith("data: "):
                    parts.append(json.loads(line[6:]))
        return None

    def load(i: int):
        api = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        while not halt.is_set():
            try:
                if i % 2:
                    ack = streamed(http, i)
                    if ack is None:
                        return
                    acks.append(ack)
                else:
                    answer = api.completions.create(model="main", prompt=f"Kill {i}", max_tokens=8)
                    acks.append((answer.id, answer.choices[0].text))
            except (openai.APIError, httpx.HTTPError):
                return

    threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.time() + 60
        while len(acks) < 30 and time.time() < deadline:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)  # mid-flight: the clients are still sending
        process.wait(timeout=10)
    finally:
        halt.set()
        for thread in threads:
            thread.join(timeout=30)
        stop(process)
    assert len(acks) >= 30
    database = store.open_store(db)
    rows = {e.id: e for e in store.entries(database)}
    database.close()
    for response_id, text in acks:
        assert response_id in rows, f"acknowledged {response_id} is missing after kill -9"
        assert rows[response_id].response == text
    assert len(acks) == len({a for a, _ in acks})  # ids are unique; the log's primary key keeps each once


# ------------------------------------------------------------------------------------------- the docs


def config_keys(cls, prefix: str = "") -> list[str]:
    """Every key of a config model, nested ones dotted (routes.NAME.split.share_b)."""
    from typing import get_args

    from pydantic import BaseModel

    keys = []
    for name, field in cls.model_fields.items():
        nested = [
            candidate
            for inner in (field.annotation, *get_args(field.annotation))
            for candidate in (inner, *get_args(inner))
            if isinstance(candidate, type) and issubclass(candidate, BaseModel)
        ]
        if not nested or name in ("routes", "split"):  # sections (routing, limits, ...) are their keys
            keys.append(prefix + name)
        for model in nested:
            keys += config_keys(model, prefix + (f"{name}.NAME." if name == "routes" else f"{name}."))
    return sorted(set(keys))


def test_docs_name_every_config_key_and_their_example_config_loads(tmp_path):
    from pathlib import Path

    from rlhfkit.config import load_config
    from rlhfkit.serve.config import ServeConfig

    page = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    missing = [key for key in config_keys(ServeConfig) if f"| `{key}` |" not in page]
    assert not missing, f"docs/serving.md does not document: {missing}"
    example = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "serve.yaml").write_text(example)
    config = load_config(ServeConfig, tmp_path / "serve.yaml", ["routes.rlhf.model=default"])
    assert set(config.route_settings()) == {"fast", "rlhf", "ab"} and config.routing.tiers == {"rlhf": "rlhf"}


def test_load_benchmark_at_test_size():
    """bench/serve_load.py for 3 s with 4 clients: answers, batches, every acknowledged response logged once (the
    full run, 16 clients for 60 s, is in BENCHMARKS.md)."""
    import subprocess
    from pathlib import Path

    result = subprocess.run(
        [sys.executable, "bench/serve_load.py", "--clients", "4", "--duration", "3", "--threads", "1"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = dict(line.strip("| ").rsplit(" | ", 1) for line in result.stdout.splitlines() if line.startswith("| "))
    assert int(table["requests answered (200)"]) > 0 and float(table["generated tokens/s"]) > 0
    assert table["audit entries of the run"] == table["acknowledged responses"]
    assert table["acknowledged but not logged"] == table["logged more than once"] == "0"
    assert table["errors (non-200 or broken)"] == "0" and float(table["mean batch size"]) >= 1
