"""The flywheel: two tiny rounds end to end with a kill between them, live feedback from the gateway turned into
labels, and the rolling window ageing out old labels. One flywheel run (module scope) serves the round tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from rlhfkit.data.records import load_records
from rlhfkit.evaluate.registry import Registry
from rlhfkit.serve import store
from rlhfkit.serve.app import create_app
from rlhfkit.serve.config import ServeConfig
from rlhfkit.stages.traffic import TrafficConfig
from rlhfkit.stages.traffic import run as traffic

SRC = Path(__file__).resolve().parents[1] / "src"
PROMPT = "We stayed at this hotel last weekend."

TINY = {
    "rounds": 2,
    "window": {"rounds": 2},
    "prompts": {"per_round": 24, "live_share": 0.5},
    "pairs": {"max_new_tokens": 16, "batch_size": 48},
    "reward": {"epochs": 1.0, "batch_size": 16, "eval_every": 10},
    "policy": {"config": {"epochs": 1.0, "batch_size": 16}},
    "eval": {"num_prompts": 6, "max_new_tokens": 16, "safety_prompts": None},
    "thresholds": {"mean_gold": ">= -1.0"},
    "threads": 1,
}


def live_traffic(db: Path) -> dict[str, str]:
    """Requests and feedback through the gateway's real API: two answers to one prompt with a side-by-side choice,
    and thumbs up and down on two answers to another."""
    app = create_app(ServeConfig(db=str(db), model="default", require_key=False, threads=1))
    with TestClient(app) as client:

        def ask(prompt: str) -> dict:
            reply = client.post("/v1/completions", json={"model": "main", "prompt": prompt, "max_tokens": 12})
            assert reply.status_code == 200, reply.text
            return reply.json()

        a, b = ask(PROMPT), ask(PROMPT)
        up, down = ask("The pasta here was"), ask("The pasta here was")
        assert client.post("/v1/feedback", json={"chosen": b["id"], "rejected": a["id"]}).status_code == 201
        assert client.post("/v1/feedback", json={"response_id": up["id"], "rating": "up"}).status_code == 201
        assert client.post("/v1/feedback", json={"response_id": down["id"], "rating": "down"}).status_code == 201
    return {"chosen": b["choices"][0]["text"], "rejected": a["choices"][0]["text"], "up": up["choices"][0]["text"]}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A flywheel of 2 rounds killed (SIGKILL) in round 2 after its reward model finished, then run again."""
    root = tmp_path_factory.mktemp("flywheel")
    db = root / "serve.sqlite"
    texts = live_traffic(db)
    config = root / "flywheel.yaml"
    config.write_text(yaml.safe_dump({**TINY, "output_dir": str(root / "run"), "gateway_db": str(db)}))
    env = {**os.environ, "PYTHONPATH": str(SRC), "RLHFKIT_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "rlhfkit.cli", "flywheel", str(config)]
    marker = root / "run" / "round-2" / "reward" / ".rlhfkit-stage.json"
    with (root / "first.log").open("w") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 600
        while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return root / "run", (root / "first.log").read_text(), second.stdout + second.stderr, texts


def test_two_rounds_resume_after_a_kill_where_they_stopped(killed_and_resumed):
    run, first, second, _ = killed_and_resumed
    assert "round 1: checkpoint #2 promoted" in first and "round 2: checkpoint" not in first
    assert "skip round 0" in second and "skip round 1" in second
    for stage in ("traffic", "pairs", "labels", "reward"):  # finished before the kill: not run again
        assert f"skip {stage} (" in second
    assert "round 2: checkpoint #3" in second
    summary = json.loads((run / "flywheel.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert (run / "flywheel.html").read_text().count("<tr>") == 4  # header + 3 rounds


def test_the_registry_records_every_round_with_its_lineage(killed_and_resumed):
    run, *_ = killed_and_resumed
    rows = Registry(run).list()
    assert [r.lineage["flywheel_round"] for r in rows] == [0, 1, 2]
    one, two = rows[1].lineage, rows[2].lineage
    assert one["parent_id"] == rows[0].id and two["parent_id"] == rows[1].id
    assert two["parent"] == rows[1].path and two["window"]["label_rounds"] == [1, 2]
    assert Path(two["labels"]).is_file() and Path(two["reward_model"]).is_dir()
    current = Registry(run).current()
    assert (run / "current").resolve() == Path(current.path).resolve()
    # round 2's reward model trained on the window: both rounds' labels
    rounds = {p.metadata["round"] for p in load_records(run / "round-2" / "labels" / "train.jsonl", "preference")}
    assert rounds == {1, 2}


def test_live_feedback_becomes_labels_of_the_round(killed_and_resumed):
    run, _, _, texts = killed_and_resumed
    labels = load_records(run / "round-1" / "labels" / "labels.jsonl", "preference")
    live = [p for p in labels if p.metadata["source"] == "feedback"]
    choice = next(p for p in live if p.metadata["entries"] and p.prompt == PROMPT)
    assert (choice.chosen, choice.rejected) == (texts["chosen"], texts["rejected"])
    assert any(p.chosen == texts["up"] and p.prompt == "The pasta here was" for p in live)
    prompts = load_records(run / "round-1" / "traffic" / "prompts.jsonl", "prompt")
    assert {p.prompt for p in prompts if p.metadata["source"] == "live"} == {PROMPT, "The pasta here was"}


def test_traffic_outside_the_window_is_left_out(killed_and_resumed, tmp_path):
    run, *_ = killed_and_resumed
    db = run.parent / "serve.sqlite"
    later = datetime.now(timezone.utc) + timedelta(days=1)
    summary = traffic(
        TrafficConfig(db=str(db), since=later.isoformat(), until=(later + timedelta(days=1)).isoformat(),
                      num_prompts=4, output_dir=str(tmp_path / "t"))
    )  # fmt: skip
    assert summary["entries"] == 0 and summary["feedback_pairs"] == 0 and summary["base_prompts_used"] == 4
    assert len(store.window(str(db), later - timedelta(days=3), later)) == 4


def test_the_rolling_window_ages_out_old_rounds(tmp_path):
    from rlhfkit.flywheel.config import FlywheelConfig
    from rlhfkit.flywheel.rounds import ROUND_FILE, round_dir, round_facts

    root = tmp_path / "run"
    (root / "model").mkdir(parents=True)
    Registry(root).register(root / "model")
    ended = {k: datetime.now(timezone.utc) - timedelta(days=days) for k, days in ((1, 50), (2, 35), (3, 10))}
    for k, moment in ended.items():
        round_dir(root, k).mkdir()
        (round_dir(root, k) / ROUND_FILE).write_text(json.dumps({"until": moment.isoformat()}))
    by_rounds = round_facts(FlywheelConfig(output_dir=str(root), window={"rounds": 2}), root, 4)
    assert by_rounds["label_rounds"] == [3] and by_rounds["aged_out"] == [1, 2]
    assert by_rounds["since"] == ended[2].isoformat()  # prompts: the traffic since round 2 ended
    by_days = round_facts(FlywheelConfig(output_dir=str(root), window={"rounds": 9, "days": 30}), root, 4)
    assert by_days["label_rounds"] == [3] and by_days["aged_out"] == [1, 2]  # rounds 1 and 2 ended over 30 days ago


def test_the_docs_name_every_key_and_their_example_loads():
    from pydantic import BaseModel

    from rlhfkit.config import build_config
    from rlhfkit.flywheel.config import FlywheelConfig

    page = (Path(__file__).resolve().parents[1] / "docs" / "flywheel.md").read_text()

    def keys(cls, prefix=""):
        for name, field in cls.model_fields.items():
            if not isinstance(field.get_default(call_default_factory=True), BaseModel) or name == "panel":
                yield prefix + name  # a section (window, prompts, ...) is described by its keys
            nested = [t for t in (*getattr(field.annotation, "__args__", ()), field.annotation) if isinstance(t, type)]
            for sub in nested:
                if issubclass(sub, BaseModel) and name != "panel":
                    yield from keys(sub, f"{prefix}{name}.")

    missing = [key for key in keys(FlywheelConfig) if f"| `{key}` |" not in page]
    assert not missing, f"docs/flywheel.md does not describe {missing}"
    example = page.split("# my-flywheel.yaml\n", 1)[1].split("```", 1)[0]
    assert build_config(FlywheelConfig, yaml.safe_load(example)).rounds == 2


def test_people_label_a_round_in_the_annotation_app(tmp_path):
    """The annotations stage creates the round's project and waits; two annotators label it through the app's API;
    the stage then exports their majority labels."""
    import threading

    from rlhfkit.data.records import write_jsonl
    from rlhfkit.feedback.annotate.app import create_app as annotation_app
    from rlhfkit.feedback.annotate.db import open_database
    from rlhfkit.feedback.annotate.service import create_admin
    from rlhfkit.stages.annotations import AnnotationsConfig
    from rlhfkit.stages.annotations import run as annotations

    db = str(tmp_path / "annotate.sqlite")
    database = open_database(db, create=True)
    with database.session() as s:
        admin = {"Authorization": f"Bearer {create_admin(s, 'ada')}"}
        s.commit()
    rows = [
        {"id": f"p{i}", "prompt": f"Review {i}:", "chosen": f"Good {i}.", "rejected": f"Bad {i}."} for i in range(4)
    ]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    config = AnnotationsConfig(
        data=str(tmp_path / "pairs.jsonl"), db=db, project="fw-round-1", judgments=8, timeout=60, poll=0.2,
        output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    result: dict = {}
    waiting = threading.Thread(target=lambda: result.update(annotations(config)))
    waiting.start()
    with TestClient(annotation_app(database)) as client:
        while client.get("/api/projects", headers=admin).json() == [] and waiting.is_alive():
            time.sleep(0.1)
        for name in ("ann", "bob"):
            token = client.post("/api/projects/fw-round-1/annotators", json={"name": name}, headers=admin).json()
            who = {"Authorization": f"Bearer {token['token']}"}
            while (item := client.post("/api/projects/fw-round-1/next", headers=who).json())["state"] == "assignment":
                side = "left" if item["assignment"]["left"].startswith("Good") else "right"
                url = f"/api/projects/fw-round-1/assignments/{item['assignment']['id']}/judgment"
                assert client.post(url, json={"choice": side}, headers=who).status_code == 200
    waiting.join(timeout=60)
    database.close()
    assert result["judgments"] == 8 and result["pairs"] == 4
    labelled = load_records(tmp_path / "out" / "pairs.jsonl", "preference")
    assert all(p.chosen.startswith("Good") for p in labelled)


@pytest.mark.parametrize("algorithm", ["dpo", "ppo", "grpo"])
def test_a_round_plan_is_a_valid_pipeline_for_every_policy_algorithm(tmp_path, algorithm):
    from rlhfkit import pipeline as runner
    from rlhfkit.flywheel.config import FlywheelConfig
    from rlhfkit.flywheel.rounds import round_plan

    config = FlywheelConfig(
        output_dir=str(tmp_path),
        policy={"algorithm": algorithm},
        sources={"judge": {"kind": "causal_lm", "model": "default"}},
    )
    facts = {"db": "serve.sqlite", "since": None, "until": "2026-12-01T00:00:00+00:00", "label_rounds": [1],
             "aged_out": [], "parent": {"id": 1, "path": str(tmp_path / "parent")}}  # fmt: skip
    (tmp_path / "round-2").mkdir()
    (tmp_path / "round-2" / "round.yaml").write_text(yaml.safe_dump(round_plan(config, tmp_path, 2, facts)))
    pipeline = runner.load_pipeline(tmp_path / "round-2" / "round.yaml")
    kinds = {stage.name: stage.kind for stage in pipeline.stages}
    assert kinds["policy"] == algorithm and kinds["judge"] == "judge" and list(kinds)[-1] == "gate"
    assert set(pipeline.stages[[*kinds].index("labels")].config.sources) == {"panel", "feedback", "judge"}


def test_simulated_users_use_the_real_gateway_and_their_interests_drift(tmp_path):
    from rlhfkit.demo.corpus import all_openings
    from rlhfkit.evaluate.registry import update_current_link
    from rlhfkit.flywheel.config import WorldSettings
    from rlhfkit.flywheel.world import World
    from rlhfkit.resolve import resolve_model_path

    update_current_link(tmp_path, str(resolve_model_path("default")))  # a run root whose current is the tiny model
    settings = WorldSettings(users=2, requests=4, topics=[["hotel"], ["hotel", "camera"]], side_by_side_rate=0.5)
    world = World(settings, tmp_path, str(tmp_path / "serve.sqlite"))
    promoted = tmp_path / "round-1" / "policy" / "model"
    shutil.copytree(resolve_model_path("default"), promoted)
    try:
        first = world.live_round(1)
        update_current_link(tmp_path, str(promoted))  # what a gate's promotion does
        second = world.live_round(2)
    finally:
        world.stop()
    assert first["topics"] == ["hotel"] and second["topics"] == ["hotel", "camera"]
    assert first["served_checkpoints"] == [str(resolve_model_path("default"))]
    assert second["served_checkpoints"] == [str(promoted)]  # hot reload: round 2's users meet the promoted model
    rows = store.window(str(tmp_path / "serve.sqlite"), datetime.now(timezone.utc) - timedelta(hours=1),
                        datetime.now(timezone.utc) + timedelta(minutes=1))  # fmt: skip
    assert len(rows) == first["requests"] + second["requests"] >= 16
    topic_of = {text: topic for topic, text in all_openings()}
    assert {topic_of[row["prompt"]] for row in rows} <= {"hotel", "camera"}
    given = sum(len(row["feedback"]) for row in rows)
    assert given >= first["thumbs"] + second["thumbs"] + first["choices"] + second["choices"] > 0
