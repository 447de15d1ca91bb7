"""Killing the server mid-labelling loses no acknowledged judgment: a real `rlhfkit annotate serve` (uvicorn)
process takes submissions from several annotator threads and is SIGKILLed; after a restart, every judgment whose
submit got a 200 is in the store, exactly once, with the choice that was acknowledged."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
from sqlalchemy import select

from rlhfkit.feedback.annotate import service
from rlhfkit.feedback.annotate.app import serve_in_background
from rlhfkit.feedback.annotate.db import open_database
from rlhfkit.feedback.annotate.models import Judgment


def annotate_until_gone(base: str, token: str, acks: list[dict], stop: threading.Event) -> None:
    """Fetch and submit as fast as possible; keep every acknowledged submission; stop at the first broken connection."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        turn = 0
        while not stop.is_set():
            try:
                result = client.post("/api/projects/kill/next").json()
                if result["state"] != "assignment":
                    return
                choice = ("left", "right", "tie", "both_bad")[turn % 4]
                turn += 1
                response = client.post(
                    f"/api/projects/kill/assignments/{result['assignment']['id']}/judgment", json={"choice": choice}
                )
            except (httpx.TransportError, ValueError):
                return
            if response.status_code == 200:
                acks.append(response.json())


def test_sigkill_mid_labelling_loses_no_acknowledged_judgment(tmp_path):
    db = str(tmp_path / "annotate.sqlite")
    database = open_database(db, create=True)
    with database.session() as s:
        project = service.create_project(s, service.ProjectSettings(name="kill", overlap=1, anchor_rate=0))
        rows = [
            (i, {"id": f"p{i}", "prompt": f"Prompt {i}", "response_a": f"first {i}", "response_b": f"second {i}"})
            for i in range(1, 401)
        ]
        service.import_pairs(s, project, rows, "pairs.jsonl")
        tokens = [service.invite(s, project, f"ann{i}")[1] for i in range(4)]
        s.commit()
    database.close()

    server, base = serve_in_background(db)
    acks: list[list[dict]] = [[] for _ in tokens]
    stop = threading.Event()
    threads = [
        threading.Thread(target=annotate_until_gone, args=(base, token, acks[i], stop))
        for i, token in enumerate(tokens)
    ]
    try:
        for thread in threads:
            thread.start()
        deadline = time.time() + 30
        while sum(map(len, acks)) < 40 and time.time() < deadline:
            time.sleep(0.02)
        os.kill(server.pid, signal.SIGKILL)  # mid-flight: the threads are still submitting
        server.wait(timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        if server.poll() is None:
            server.kill()
    acknowledged = [ack for per_thread in acks for ack in per_thread]
    assert len(acknowledged) >= 40

    restarted, _ = serve_in_background(db, port=int(base.rsplit(":", 1)[1]))  # the store opens cleanly after the crash
    try:
        database = open_database(db)
        with database.session() as s:
            stored = {j.id: j for j in s.scalars(select(Judgment))}
        database.close()
        for ack in acknowledged:
            judgment = stored.get(ack["judgment_id"])
            assert judgment is not None, f"acknowledged judgment {ack} is missing after the crash"
            assert judgment.assignment_id == ack["assignment_id"]
            assert service._side(judgment.choice, judgment.shown_first) == ack["choice"]
        assignment_ids = [j.assignment_id for j in stored.values()]
        assert len(assignment_ids) == len(set(assignment_ids))  # no duplicates
        # labelling goes on after the restart
        headers = {"Authorization": f"Bearer {tokens[0]}"}
        item = httpx.post(f"{base}/api/projects/kill/next", headers=headers, timeout=10).json()["assignment"]
        response = httpx.post(
            f"{base}/api/projects/kill/assignments/{item['id']}/judgment",
            headers=headers,
            json={"choice": "tie"},
            timeout=10,
        )
        assert response.status_code == 200
    finally:
        restarted.terminate()
        restarted.wait(timeout=10)
