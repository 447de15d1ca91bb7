"""Load benchmark of the annotation app: N simulated annotators hammer a real `rlhfkit annotate serve` (uvicorn)
over loopback for a while; prints p50/p95 latency of fetch-next and submit and checks that no acknowledged
judgment is lost or duplicated (client acknowledgements against the rows in the store).

    python bench/annotate_load.py                      # 50 annotators, 60 s, SQLite in a temporary folder
    python bench/annotate_load.py --annotators 5 --duration 3
    python bench/annotate_load.py --db postgresql://user@127.0.0.1/bench   # an empty database you own
    python bench/annotate_load.py --db postgresql://user@127.0.0.1/bench --workers 4   # serve --workers 4

Each annotator loops: POST /next, then POST the judgment; one submission in 20 is sent twice (the second must be
answered identically and add no row). Think time is 0 unless --think-ms is given: this is a stress test.
Checked afterwards, in the store: no acknowledged judgment lost or duplicated, no pair given to more annotators than
max_judgments allows, no pair given to one annotator twice (what racing workers would break).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from rlhfkit.feedback.annotate import service
from rlhfkit.feedback.annotate.app import serve_in_background
from rlhfkit.feedback.annotate.db import open_database
from rlhfkit.feedback.annotate.models import Annotator, Assignment, Judgment, Project


def prepare(db: str, annotators: int, pairs: int, overlap: int) -> list[str]:
    """A project 'bench' with `pairs` main pairs, 5 anchors and one token per annotator (no calibration round)."""
    database = open_database(db, create=True)
    with database.session() as s:
        project = service.create_project(
            s, service.ProjectSettings(name="bench", overlap=overlap, anchor_rate=0.1, batch_size=10)
        )
        rows = [
            (
                i,
                {
                    "id": f"p{i}",
                    "prompt": f"We stayed at hotel {i} last week.",
                    "response_a": f"Lovely stay {i}, kind staff.",
                    "response_b": f"Awful stay {i}, dirty room.",
                },
            )
            for i in range(1, pairs + 1)
        ]
        service.import_pairs(s, project, rows, "bench-pairs.jsonl")
        anchors = [
            (
                i,
                {
                    "id": f"anchor{i}",
                    "prompt": f"Anchor {i}.",
                    "response_a": "Clear and kind.",
                    "response_b": "Rude.",
                    "answer": "a",
                },
            )
            for i in range(1, 6)
        ]
        service.import_pairs(s, project, anchors, "bench-anchors.jsonl", role="anchor")
        tokens = [service.invite(s, project, f"sim-{i:02d}")[1] for i in range(annotators)]
        s.commit()
    database.close()
    return tokens


async def annotator(base: str, token: str, until: float, think: float, stats: dict, seed: int) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        while time.perf_counter() < until:
            start = time.perf_counter()
            response = await client.post("/api/projects/bench/next")
            stats["next"].append(time.perf_counter() - start)
            if response.status_code != 200:
                stats["errors"].append(f"next {response.status_code}")
                continue
            result = response.json()
            if result["state"] != "assignment":
                stats["ran_dry"] += 1
                return
            item = result["assignment"]
            if think:
                await asyncio.sleep(rng.expovariate(1 / think))
            body = {"choice": rng.choice(("left", "left", "right", "right", "tie", "both_bad"))}
            start = time.perf_counter()
            response = await client.post(f"/api/projects/bench/assignments/{item['id']}/judgment", json=body)
            stats["submit"].append(time.perf_counter() - start)
            if response.status_code != 200:
                stats["errors"].append(f"submit {response.status_code}")
                continue
            ack = response.json()
            stats["acks"][ack["assignment_id"]] = ack
            if rng.random() < 0.05:  # a double click: must be answered the same and store nothing new
                again = await client.post(f"/api/projects/bench/assignments/{item['id']}/judgment", json=body)
                stats["resubmits"] += 1
                if again.status_code != 200 or again.json() != ack:
                    stats["errors"].append("re-submission answered differently")


async def drive(base: str, tokens: list[str], duration: float, think: float) -> dict:
    stats = {"next": [], "submit": [], "errors": [], "acks": {}, "resubmits": 0, "ran_dry": 0}
    until = time.perf_counter() + duration
    started = time.perf_counter()
    await asyncio.gather(*(annotator(base, token, until, think, stats, seed) for seed, token in enumerate(tokens)))
    stats["seconds"] = time.perf_counter() - started
    return stats


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def check_store(db: str, acks: dict) -> dict:
    """Acknowledged judgments missing from the store, and rows that should not be there."""
    database = open_database(db)
    with database.session() as s:
        rows = s.execute(
            select(Judgment.id, Judgment.assignment_id)
            .join(Annotator, Annotator.id == Judgment.annotator_id)
            .where(Annotator.kind == "human")
        ).all()
        per_assignment = dict(
            s.execute(
                select(Judgment.assignment_id, func.count()).group_by(Judgment.assignment_id).having(func.count() > 1)
            ).all()
        )
        cap = s.scalar(select(Project.max_judgments).where(Project.name == "bench"))
        # assignments (open or judged) per main pair, and per annotator and pair
        over_cap = s.execute(
            select(Assignment.pair_id)
            .where(Assignment.phase == "main")
            .group_by(Assignment.pair_id)
            .having(func.count() > cap)
        ).all()
        twice = s.execute(
            select(Assignment.annotator_id, Assignment.pair_id)
            .group_by(Assignment.annotator_id, Assignment.pair_id)
            .having(func.count() > 1)
        ).all()
    database.close()
    stored = {assignment_id: judgment_id for judgment_id, assignment_id in rows}
    lost = [a for a, ack in acks.items() if stored.get(a) != ack["judgment_id"]]
    return {
        "rows": len(rows),
        "lost": len(lost),
        "duplicated": len(per_assignment) + max(0, len(rows) - len(stored)),
        "unacknowledged_rows": len(set(stored) - set(acks)),
        "over_cap": len(over_cap),
        "cap": cap,
        "twice": len(twice),
    }


def report(args, stats: dict, store: dict) -> str:
    ms = 1000.0
    lines = [
        f"{args.annotators} simulated annotators, {stats['seconds']:.1f} s, {args.db_kind}, "
        f"{args.workers} server worker{'s' if args.workers > 1 else ''}, think time "
        f"{args.think_ms} ms; "
        f"{os.cpu_count()} CPUs, load average {args.load_before:.2f} just before the run (server and clients share "
        "them)",
        "",
        "| operation | requests | p50 ms | p95 ms | p99 ms | per second |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("next", "fetch next"), ("submit", "submit judgment")):
        values = stats[name]
        lines.append(
            f"| {label} | {len(values)} | {percentile(values, 0.5) * ms:.1f} | {percentile(values, 0.95) * ms:.1f} | "
            f"{percentile(values, 0.99) * ms:.1f} | {len(values) / stats['seconds']:.1f} |"
        )
    lines += [
        "",
        "| check | count |",
        "|---|---:|",
        f"| judgments acknowledged (200) | {len(stats['acks'])} |",
        f"| judgment rows in the store | {store['rows']} |",
        f"| acknowledged but lost | {store['lost']} |",
        f"| duplicated rows | {store['duplicated']} |",
        f"| rows never acknowledged (client timed out or gave up) | {store['unacknowledged_rows']} |",
        f"| re-submissions (same assignment, must add no row) | {stats['resubmits']} |",
        f"| pairs given to more than max_judgments ({store['cap']}) annotators | {store['over_cap']} |",
        f"| pairs given to one annotator twice | {store['twice']} |",
        f"| errors (non-200) | {len(stats['errors'])} |",
    ]
    if stats["ran_dry"]:
        lines.append(f"\nnote: {stats['ran_dry']} annotators ran out of pairs before the end; raise --pairs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotators", type=int, default=50, help="concurrent simulated annotators (default 50)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--pairs", type=int, default=3000, help="main pairs in the project (default 3000)")
    parser.add_argument("--overlap", type=int, default=3, help="judgments wanted per pair (default 3)")
    parser.add_argument(
        "--think-ms", type=float, default=0.0, help="mean think time between fetch and submit (default 0)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="server worker processes (`serve --workers`; PostgreSQL only)"
    )
    parser.add_argument(
        "--db", default=None, help="database URL or SQLite path (default: a new SQLite file in a temporary folder)"
    )
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="rlhfkit-bench-")
    db = args.db or str(Path(folder) / "bench.sqlite")
    args.db_kind = "PostgreSQL" if db.startswith("postgres") else "SQLite (WAL, synchronous=FULL)"
    tokens = prepare(db, args.annotators, args.pairs, args.overlap)
    server, base = serve_in_background(db, workers=args.workers)
    args.load_before = os.getloadavg()[0]
    try:
        stats = asyncio.run(drive(base, tokens, args.duration, args.think_ms / 1000))
    finally:
        server.terminate()
        server.wait(timeout=30)
    store = check_store(db, stats["acks"])
    print(report(args, stats, store))
    if stats["errors"]:
        print(f"\nfirst errors: {stats['errors'][:5]}", file=sys.stderr)
    return 1 if store["lost"] or store["duplicated"] or store["over_cap"] or store["twice"] or stats["errors"] else 0


if __name__ == "__main__":
    os.environ.setdefault("RLHFKIT_NO_PROGRESS", "1")
    sys.exit(main())
