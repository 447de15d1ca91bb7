"""Load benchmark of the gateway: N concurrent clients drive a real `rlhfkit serve` (uvicorn, the embedded default
model) over loopback for a fixed time; prints requests/s, tokens/s, p50/p95/p99 latency, time to first token of the
streamed requests, the mean batch size (from /metrics), and checks that every acknowledged response is in the audit
log exactly once.

    python bench/serve_load.py                         # 16 clients, 60 s, SQLite in a temporary folder
    python bench/serve_load.py --clients 4 --duration 3
    python bench/serve_load.py --db postgresql://user@127.0.0.1/bench   # an empty database you own

Each client loops with no think time: a completion of the review task's prompts (`--max-tokens` new tokens at most),
every other client streaming. When the time is up, the clients finish the request in hand and stop (each request
has a 60 s timeout, so the run is bounded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from rlhfkit.serve import store
from rlhfkit.serve.app import serve_in_background

PROMPTS = [
    "We had dinner at the little Italian place downtown last week.",
    "I bought this phone.",
    "We stayed at the harbor hotel last week.",
    "The cafe",
    "My sister recommended this bakery",
    "The new headphones arrived on Monday.",
]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def client(i: int, base: str, key: str, args, deadline: float, results: list[dict]) -> None:
    stream = i % 2 == 1 and args.stream
    rng = random.Random(i)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        while time.monotonic() < deadline:
            body = {"model": "main", "prompt": rng.choice(PROMPTS), "max_tokens": args.max_tokens, "stream": stream}
            started = time.monotonic()
            row = {"stream": stream, "ok": False}
            try:
                if stream:
                    parts, first = [], None
                    async with http.stream("POST", "/v1/completions", json=body) as response:
                        async for line in response.aiter_lines():
                            if line == "data: [DONE]":
                                row["ok"] = response.status_code == 200
                                break
                            if line.startswith("data: "):
                                part = json.loads(line[6:])
                                if part.get("choices") and part["choices"][0]["text"]:
                                    first = first or time.monotonic()
                                parts.append(part)
                    if row["ok"]:
                        row["id"] = parts[0]["id"]
                        row["text"] = "".join(p["choices"][0]["text"] for p in parts if p.get("choices"))
                        row["ttft"] = (first - started) if first else None
                else:
                    response = await http.post("/v1/completions", json=body)
                    if response.status_code == 200:
                        data = response.json()
                        row.update(ok=True, id=data["id"], text=data["choices"][0]["text"])
                        row["tokens"] = data["usage"]["completion_tokens"]
                    else:
                        row["status"] = response.status_code
            except (httpx.HTTPError, ValueError) as exc:
                row["error"] = repr(exc)
            row["latency"] = time.monotonic() - started
            results.append(row)


def batch_sizes(base: str) -> tuple[float, float]:
    """(batches, requests batched) from the gateway's batch-size histogram."""
    count = total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=10).text):
        if family.name == "rlhfkit_serve_batch_size":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    count += sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
    return count, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="no client streams")
    parser.add_argument("--db", default=None, help="store URL or SQLite path (default: a temporary SQLite file)")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="rlhfkit-serve-load-")
    db = args.db or str(Path(folder) / "serve.sqlite")
    database = store.open_store(db)
    name = f"bench-{os.getpid()}-{time.time_ns()}"
    key = store.add_key(database, name)
    overrides = [
        f"db={db}",
        "model=default",
        f"batching.max_batch={args.max_batch}",
        f"batching.wait_ms={args.wait_ms}",
        "limits.requests=null",
        "limits.tokens=null",
    ] + ([f"threads={args.threads}"] if args.threads else [])
    server, base = serve_in_background(None, overrides)
    results: list[dict] = []
    try:
        # one request first: the first forward pass of a fresh process pays one-off costs the figures should not show
        warm = {"model": "main", "prompt": PROMPTS[0], "max_tokens": args.max_tokens}
        httpx.post(f"{base}/v1/completions", json=warm, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        started = time.monotonic()
        deadline = started + args.duration

        async def run():
            await asyncio.gather(*(client(i, base, key, args, deadline, results) for i in range(args.clients)))

        asyncio.run(run())
        elapsed = time.monotonic() - started
        batches, batched = batch_sizes(base)
    finally:
        server.terminate()
        server.wait(timeout=30)

    acked = [r for r in results if r["ok"]]
    rows = {e.id: e for e in store.entries(database, key=name)[1:]}  # less the warm-up request
    database.close()
    counts = Counter(r["id"] for r in acked)
    lost = [r["id"] for r in acked if r["id"] not in rows]
    mismatched = [r["id"] for r in acked if r["id"] in rows and rows[r["id"]].response != r["text"]]
    tokens = sum(rows[r["id"]].completion_tokens for r in acked if r["id"] in rows)
    latencies = [r["latency"] * 1000 for r in acked]
    streamed = [r for r in acked if r["stream"]]
    ttft = [r["ttft"] * 1000 for r in streamed if r.get("ttft") is not None]

    print(
        f"{args.clients} clients, {args.duration:.0f} s, max_tokens {args.max_tokens}, max_batch {args.max_batch}, "
        f"wait {args.wait_ms:g} ms, {'every other client streaming' if args.stream else 'no streaming'}\n"
    )
    print("| measure | value |")
    print("|---|---:|")
    table = [
        ("requests answered (200)", f"{len(acked)}"),
        ("requests/s", f"{len(acked) / elapsed:.1f}"),
        ("generated tokens/s", f"{tokens / elapsed:.1f}"),
        ("latency p50 / p95 / p99 ms", " / ".join(f"{percentile(latencies, q):.0f}" for q in (50, 95, 99))),
        (
            "streamed: time to first token p50 / p95 / p99 ms",
            " / ".join(f"{percentile(ttft, q):.0f}" for q in (50, 95, 99)),
        ),
        ("mean batch size", f"{batched / batches:.2f}" if batches else "n/a"),
        ("mean tokens per response", f"{tokens / max(1, len(acked)):.1f}"),
    ]
    for name, value in table:
        print(f"| {name} | {value} |")
    print("\n| check | count |")
    print("|---|---:|")
    checks = [
        ("acknowledged responses", len(acked)),
        ("audit entries of the run", len(rows)),
        ("acknowledged but not logged", len(lost)),
        ("logged more than once", sum(1 for c in counts.values() if c > 1)),
        ("logged text differs from the response", len(mismatched)),
        ("errors (non-200 or broken)", len(results) - len(acked)),
    ]
    for name, value in checks:
        print(f"| {name} | {value} |")
    return 1 if lost or mismatched or any(c > 1 for c in counts.values()) or not acked else 0


if __name__ == "__main__":
    sys.exit(main())
