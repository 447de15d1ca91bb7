"""A simulated world around the flywheel: users who send prompts to a real `rlhfkit serve` gateway over HTTP and give
feedback judged by the gold judge with noise, whose interests drift across rounds (new review topics appear).

The gateway runs in this process (uvicorn in a thread, on 127.0.0.1 and a free port), serving the run root: it
follows OUTPUT_DIR/current, so a promotion or rollback reaches the users by hot reload. It goes with the process.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..console import say
from .config import WorldSettings


class World:
    def __init__(self, settings: WorldSettings, root: Path, db: str):
        self.settings, self.root, self.db = settings, root, db
        self.server = self.thread = self.base = None

    def start(self) -> None:
        import uvicorn

        from ..serve.app import create_app, free_port
        from ..serve.config import ServeConfig

        port = free_port()
        config = ServeConfig(
            host="127.0.0.1",
            port=port,
            db=self.db,
            model=str(self.root),
            poll_seconds=0.5,
            limits={"requests": None, "tokens": None},
            threads=1,
        )
        self.app = create_app(config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="flywheel-gateway", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the simulated world's gateway did not start")
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{port}"
        say(f"world: gateway on {self.base}/v1 serving {self.root} (follows {self.root / 'current'})")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=30)
            self.server = None

    def wait_for_current(self, timeout: float = 120.0) -> None:
        """Until the gateway serves the run root's current checkpoint: hot reload loads a promoted model in the
        background, and the users of the next round should meet the one the last round released."""
        import httpx

        wanted = (self.root / "current").resolve()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            served = httpx.get(f"{self.base}/healthz", timeout=10).json().get("routes", {}).values()
            if any(Path(str(checkpoint)).resolve() == wanted for checkpoint in served):
                return
            time.sleep(0.2)
        say(f"world: the gateway still does not serve {wanted} after {timeout:.0f} s; the users go ahead")

    def topics(self, number: int) -> list[str]:
        return self.settings.topics[min(number, len(self.settings.topics)) - 1]

    def live_round(self, number: int) -> dict[str, Any]:
        """The users' traffic before round `number`: requests, thumbs and side-by-side choices, through the API."""
        import httpx

        from ..demo.corpus import split_openings
        from ..scoring import load_scorer
        from ..serve import store

        if self.server is None:
            self.start()
        self.wait_for_current()
        s = self.settings
        topics = self.topics(number)
        openings = [text for topic, text in split_openings()[0] if topic in topics]
        gold = load_scorer("default")
        database = store.open_store(self.db)
        keys = [store.add_key(database, f"sim-r{number}-u{i}-{random.getrandbits(24):06x}") for i in range(s.users)]
        database.close()
        counts = {"requests": 0, "thumbs": 0, "choices": 0, "gold": 0.0}
        served: set[str] = set()
        lock = threading.Lock()

        def user(index: int) -> None:
            rng = random.Random(f"{s.seed}-{number}-{index}")
            headers = {"Authorization": f"Bearer {keys[index]}"}
            with httpx.Client(base_url=f"{self.base}/v1", headers=headers, timeout=120) as client:

                def ask(prompt: str) -> tuple[str, str, float]:
                    reply = client.post(
                        "/completions", json={"model": "main", "prompt": prompt, "max_tokens": s.max_tokens}
                    )
                    reply.raise_for_status()
                    body = reply.json()
                    text = body["choices"][0]["text"]
                    with lock:
                        counts["requests"] += 1
                        served.add(reply.headers.get("X-Rlhfkit-Checkpoint", "?"))
                    return body["id"], text, gold([prompt], [text])[0]

                for _ in range(s.requests):
                    prompt = rng.choice(openings)
                    first, text, score = ask(prompt)
                    with lock:
                        counts["gold"] += score
                    if rng.random() < s.side_by_side_rate:
                        second, _, other = ask(prompt)
                        better_first = (score >= other) != (rng.random() < s.noise)
                        chosen, rejected = (first, second) if better_first else (second, first)
                        client.post("/feedback", json={"chosen": chosen, "rejected": rejected}).raise_for_status()
                        with lock:
                            counts["choices"] += 1
                    elif rng.random() < s.thumbs_rate:
                        up = (score > s.thumbs_up_above) != (rng.random() < s.noise)
                        client.post(
                            "/feedback", json={"response_id": first, "rating": "up" if up else "down"}
                        ).raise_for_status()
                        with lock:
                            counts["thumbs"] += 1

        with ThreadPoolExecutor(s.users) as pool:
            list(pool.map(user, range(s.users)))
        summary = {
            "topics": topics,
            "users": s.users,
            "requests": counts["requests"],
            "thumbs": counts["thumbs"],
            "choices": counts["choices"],
            "served_gold": round(counts["gold"] / max(1, s.users * s.requests), 4),
            "served_checkpoints": sorted(served),
        }
        say(
            f"world before round {number}: {s.users} users asked about {', '.join(topics)}: {summary['requests']} "
            f"requests, {summary['thumbs']} thumbs, {summary['choices']} choices; mean gold of first answers "
            f"{summary['served_gold']:.3f}; served by {', '.join(summary['served_checkpoints'])}"
        )
        return summary
