"""The rounds of the flywheel, each one a pipeline run by the cached, resumable runner in OUTPUT_DIR/round-N:

    traffic (gateway window + base prompts) -> pairs (sampled from the current policy, panel-labelled) -> judge /
    annotate (optional) -> labels (this round's, and the rolling window) -> reward (retrained) -> audit (reward eval
    on the newest held-out pairs) -> shift -> policy (dpo, ppo or grpo) -> eval -> gate (promote, or keep the parent)

Round 0 registers the starting policy (after an optional SFT). A round's fixed facts (its window, its parent) are
written to round-N/round.json before its pipeline starts, so a rerun after a kill builds the same pipeline, and the
runner skips every stage that finished; a round whose round.json says finished is skipped whole.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from .. import pipeline as runner
from ..atomic import check_writable, write_json
from ..console import console, say
from ..evaluate.registry import Registry, update_current_link
from ..resolve import resolve_model_path
from .config import FlywheelConfig

ROUND_FILE = "round.json"
PLAN_FILE = "round.yaml"


def read_json(path: Path) -> dict[str, Any]:
    return runner.read_json(path) or {}


def round_dir(root: Path, number: int) -> Path:
    return root / f"round-{number}"


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def gateway_db(config: FlywheelConfig) -> str:
    return config.gateway_db or str(Path(config.output_dir) / "serve.sqlite")


# ------------------------------------------------------------------------------------------ the plans


def common(config: FlywheelConfig) -> dict[str, Any]:
    return {"threads": config.threads} if config.threads else {}


def initial_plan(config: FlywheelConfig, root: Path) -> dict[str, Any]:
    stages: list[dict[str, Any]] = []
    if config.sft is not None:
        stages.append(
            {"name": "sft", "stage": "sft", "config": {"model": config.model, **common(config), **config.sft}}
        )
        model = "${sft}/model"
    else:
        model = str(resolve_model_path(config.model))
    stages += [
        {"name": "eval", "stage": "eval", "config": {**common(config), **config.eval, "models": {"initial": model}}},
        {
            "name": "gate",
            "stage": "gate",
            "checkpoint": model,
            "config": {
                "metrics": "${eval}/eval.json",
                "model_name": "initial",
                "registry": str(root),
                "thresholds": config.initial_thresholds,
                "lineage": {"flywheel_round": 0, "start": config.model},
            },
        },
    ]
    return {"output_dir": str(round_dir(root, 0)), "stages": stages}


def round_plan(config: FlywheelConfig, root: Path, number: int, facts: dict[str, Any]) -> dict[str, Any]:
    parent = facts["parent"]["path"]
    seed = config.seed + number
    src = config.sources
    stages: list[dict[str, Any]] = [
        {
            "name": "traffic",
            "stage": "traffic",
            "config": {
                "db": facts["db"],
                "since": facts["since"],
                "until": facts["until"],
                "routes": config.prompts.routes,
                "base_prompts": config.prompts.base,
                "base_categories": config.prompts.base_categories,
                "num_prompts": config.prompts.per_round,
                "live_share": config.prompts.live_share,
                "seed": seed,
            },
        },
        {
            "name": "pairs",
            "stage": "pairs",
            "config": {
                **common(config),
                **config.pairs,
                "model": parent,
                "prompts": "${traffic}/prompts.jsonl",
                "seed": seed,
                **({"panel": src.panel.model_dump()} if src.panel else {}),
            },
        },
    ]
    sources: dict[str, str] = {}
    if src.panel:
        sources["panel"] = "${pairs}/pairs.jsonl"
    if src.feedback:
        sources["feedback"] = "${traffic}/feedback_pairs.jsonl"
    if src.judge:
        stages.append(
            {
                "name": "judge",
                "stage": "judge",
                "config": {**common(config), **src.judge, "data": "${pairs}/pairs.jsonl", "known_labels": False},
            }
        )
        sources["judge"] = "${judge}/pairs.jsonl"
    if src.annotate:
        stages.append(
            {
                "name": "annotate",
                "stage": "annotations",
                "config": {
                    **src.annotate.model_dump(),
                    "project": f"{src.annotate.project}-round-{number}",
                    "data": "${pairs}/pairs.jsonl",
                },
            }
        )
        sources["annotate"] = "${annotate}/pairs.jsonl"
    earlier = {f"round-{k}": str(round_dir(root, k) / "labels" / "labels.jsonl") for k in facts["label_rounds"]}
    previous = round_dir(root, number - 1)
    parent_rm = previous / "reward" / "model"
    stages += [
        {
            "name": "labels",
            "stage": "labels",
            "config": {
                "round": number,
                "sources": sources,
                "earlier": earlier,
                "heldout_fraction": config.heldout_fraction,
                "seed": config.seed,
            },
        },
        {
            "name": "reward",
            "stage": "reward-train",
            "config": {
                "epochs": 2.0,
                "batch_size": 32,
                "lr": 3.0e-4,
                "eval_every": 25,
                **common(config),
                **config.reward,
                "data": "${labels}/train.jsonl",
                "seed": seed,
            },
        },
        {
            "name": "audit",
            "stage": "reward-eval",
            "config": {"model": "${reward}/model", "data": "${labels}/newest.jsonl"},
        },
        {
            "name": "shift",
            "stage": "round-shift",
            "config": {
                "newest": "${labels}/newest.jsonl",
                "older": "${labels}/older.jsonl",
                "reference": str(previous / "labels" / "train.jsonl") if number > 1 else None,
                "reward_model": str(parent_rm) if number > 1 and parent_rm.is_dir() else None,
                "checks": config.shift.checks,
            },
        },
        policy_stage(config, parent, seed),
        {
            "name": "eval",
            "stage": "eval",
            "config": {
                **common(config),
                **config.eval,
                "models": {"parent": parent, "candidate": "${policy}/model"},
                "baseline": "parent",
                "reward_model": "${reward}/model",
            },
        },
        {
            "name": "gate",
            "stage": "gate",
            "checkpoint": "${policy}/model",
            "config": {
                "metrics": "${eval}/eval.json",
                "model_name": "candidate",
                "registry": str(root),
                "thresholds": config.thresholds,
                "lineage": {
                    "flywheel_round": number,
                    "parent": parent,
                    "parent_id": facts["parent"]["id"],
                    "window": {
                        "since": facts["since"],
                        "until": facts["until"],
                        "label_rounds": [*facts["label_rounds"], number],
                        "aged_out": facts["aged_out"],
                    },
                    "labels": "${labels}/labels.jsonl",
                    "label_sources": list(sources),
                    "reward_model": "${reward}/model",
                },
            },
        },
    ]
    return {"output_dir": str(round_dir(root, number)), "stages": stages}


def policy_stage(config: FlywheelConfig, parent: str, seed: int) -> dict[str, Any]:
    algorithm = config.policy.algorithm
    if algorithm == "dpo":
        data = "${labels}/new_train.jsonl" if config.policy.data == "new" else "${labels}/train.jsonl"
        values = {"epochs": 1.0, "batch_size": 32, "lr": 5.0e-5, "beta": 0.1, "eval_every": 50}
        values |= {**common(config), **config.policy.config, "model": parent, "ref_model": parent, "data": data}
    else:
        values = {"steps": 20, "batch_size": 16, "mini_batch_size": 16}
        values |= {
            **common(config),
            **config.policy.config,
            "model": parent,
            "ref_model": parent,
            "prompts": "${traffic}/prompts.jsonl",
            "rewards": [{"model": "${reward}/model"}],
        }
    return {"name": "policy", "stage": algorithm, "config": {**values, "seed": seed}}


# ------------------------------------------------------------------------------------------ running


def run_plan(plan: dict[str, Any], folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PLAN_FILE
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return runner.run(runner.load_pipeline(path))


def round_facts(config: FlywheelConfig, root: Path, number: int) -> dict[str, Any]:
    """What a round fixes when it starts: its window of traffic and of labels, and its parent checkpoint."""
    until = now()
    window = config.window
    label_rounds = list(range(max(1, number - window.rounds + 1), number))
    if window.days is not None:
        since = until - timedelta(days=window.days)
        label_rounds = [
            k for k in label_rounds if read_json(round_dir(root, k) / ROUND_FILE).get("until", "") >= since.isoformat()
        ]
    else:
        oldest = number - window.rounds  # traffic since the end of the round before the oldest one in the window
        since = (
            datetime.fromisoformat(read_json(round_dir(root, oldest) / ROUND_FILE)["until"]) if oldest >= 1 else None
        )
    current = Registry(root).current()
    return {
        "round": number,
        "started_at": until.isoformat(),
        "until": until.isoformat(),
        "since": since.isoformat() if since else None,
        "db": gateway_db(config),
        "label_rounds": label_rounds,
        "aged_out": [k for k in range(1, number) if k not in label_rounds],
        "parent": {"id": current.id, "path": current.path},
        "finished": False,
    }


def outcome(root: Path, folder: Path, result: dict[str, Any], config: FlywheelConfig) -> dict[str, Any]:
    """The round's figures and decision, read back from what its stages wrote; moves `current` back on a rollback."""
    gate = read_json(folder / "gate" / "gate.json")
    evaluated = read_json(folder / "eval" / "eval.json").get("results", {})
    shift = read_json(folder / "shift" / "shift.json")
    registry = Registry(root)
    passed = bool(gate.get("passed"))
    blocked = bool(passed and config.shift.block and shift.get("shifted"))
    if blocked:
        registry.rollback()
    current = registry.current()
    update_current_link(root, current.path)  # a failed gate left the parent current; make sure the link says so
    audit = read_json(folder / "audit" / "summary.json")
    labels = read_json(folder / "labels" / "summary.json")
    return {
        "checkpoint_id": gate.get("id"),
        "passed": passed,
        "promoted": passed and not blocked,
        "rolled_back": not passed or blocked,
        "blocked_by_shift": blocked,
        "current": {"id": current.id, "path": current.path},
        "gold_parent": evaluated.get("parent", {}).get("mean_gold"),
        "gold_candidate": evaluated.get("candidate", evaluated.get("initial", {})).get("mean_gold"),
        "win_rate": evaluated.get("candidate", {}).get("win_rate"),
        "rm_accuracy_newest": audit.get("accuracy"),
        "rm_gold_accuracy_newest": audit.get("gold_accuracy"),
        "rm_ece_newest": audit.get("ece"),
        "labels": labels.get("by_source"),
        "new_share": labels.get("new_share"),
        "window_pairs": labels.get("train"),
        "traffic": read_json(folder / "traffic" / "summary.json"),
        "shift": shift,
        "stages": {row["name"]: row["status"] for row in result["stages"]},
    }


def run(config: FlywheelConfig) -> dict[str, Any]:
    """Run (or resume) every round; returns what OUTPUT_DIR/flywheel.json holds."""
    from ..demo.build import ensure_default

    root = check_writable(config.output_dir, "output_dir")
    root.mkdir(parents=True, exist_ok=True)
    ensure_default()
    world = None
    if config.world is not None:
        from .world import World

        world = World(config.world, root, gateway_db(config))
    rounds: list[dict[str, Any]] = []
    try:
        for number in range(config.rounds + 1):
            folder = round_dir(root, number)
            facts = read_json(folder / ROUND_FILE)
            if facts.get("finished"):
                say(f"skip round {number}: finished at {facts.get('finished_at')}")
                rounds.append(facts)
                continue
            console.rule(f"flywheel round {number}" + (" (resuming)" if facts else ""))
            if number == 0:
                facts = facts or {"round": 0, "started_at": now().isoformat(), "finished": False}
                write_json(folder / ROUND_FILE, facts)
                result = run_plan(initial_plan(config, root), folder)
            else:
                if not facts:
                    if world is not None:
                        traffic = world.live_round(number)
                    facts = round_facts(config, root, number)
                    if world is not None:
                        facts["world"] = traffic
                    write_json(folder / ROUND_FILE, facts)
                result = run_plan(round_plan(config, root, number, facts), folder)
            facts |= outcome(root, folder, result, config)
            facts |= {"finished": True, "finished_at": now().isoformat()}
            write_json(folder / ROUND_FILE, facts)
            rounds.append(facts)
            verdict = "promoted" if facts["promoted"] else "rolled back (the parent stays current)"
            say(f"round {number}: checkpoint #{facts['checkpoint_id']} {verdict}; current is #{facts['current']['id']}")
            if config.report:
                write_summary(root, config, rounds)
    finally:
        if world is not None:
            world.stop()
    return write_summary(root, config, rounds)


def write_summary(root: Path, config: FlywheelConfig, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {"output_dir": str(root), "rounds": rounds, "registry": str(root / "registry.sqlite")}
    if config.report:
        from .report import build_report

        summary["report"] = str(build_report(root, rounds))
    write_json(root / "flywheel.json", summary)
    return summary
