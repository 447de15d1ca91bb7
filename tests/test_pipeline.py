"""`rlhfkit run PIPELINE.yaml`: stages in order, skipped when unchanged, rerun when they or their inputs change,
and a bad pipeline stopped before any folder exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhfkit import pipeline
from rlhfkit.errors import ConfigError
from rlhfkit.stages.demo import PIPELINE as DEMO_PIPELINE

NAMES = ["sft", "pairs", "reward", "dpo"]
KINDS = {"sft": "sft", "pairs": "pairs", "reward": "reward-train", "dpo": "dpo"}


def tiny_pipeline(tmp_path: Path) -> Path:
    spec = {
        "output_dir": str(tmp_path / "run"),
        "stages": [
            {
                "name": "sft",
                "stage": "sft",
                "config": {"max_steps": 2, "batch_size": 8, "eval_every": 2, "val_fraction": 0.01},
            },
            {
                "name": "pairs",
                "stage": "pairs",
                "config": {"model": "${sft}/model", "num_prompts": 24, "max_new_tokens": 24},
            },
            {
                "name": "reward",
                "stage": "reward-train",
                "config": {"data": "${pairs}/pairs.jsonl", "max_steps": 3, "batch_size": 8, "eval_every": 3},
            },
            {
                "name": "dpo",
                "stage": "dpo",
                "config": {
                    "model": "${sft}/model",
                    "data": "${pairs}/pairs.jsonl",
                    "max_steps": 2,
                    "batch_size": 8,
                    "eval_every": 2,
                },
            },
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_pipeline(path: Path, *overrides: str, force: tuple[str, ...] = ()) -> dict:
    return pipeline.run(pipeline.load_pipeline(path, list(overrides), force=force))


def statuses(result: dict) -> dict[str, str]:
    return {row["name"]: row["status"] for row in result["stages"]}


def test_second_run_skips_and_changes_rerun_what_depends_on_them(tmp_path, capfd, monkeypatch):
    path = tiny_pipeline(tmp_path)
    run_dir = tmp_path / "run"

    first = run_pipeline(path)
    assert statuses(first) == dict.fromkeys(NAMES, "ran")
    for name in NAMES:
        marker = json.loads((run_dir / name / pipeline.MARKER).read_text())
        assert marker["fingerprint"] == first["stages"][NAMES.index(name)]["fingerprint"]
        assert not (run_dir / name / pipeline.RUNNING).exists()
    assert (run_dir / "dpo" / "model" / "config.json").is_file()
    assert json.loads((run_dir / "pipeline.json").read_text())["stages"][0]["status"] == "ran"
    assert "${sft}/model" in (run_dir / "pipeline.yaml").read_text()  # the resolved pipeline keeps its references
    capfd.readouterr()

    second = run_pipeline(path)
    err = capfd.readouterr().err
    assert statuses(second) == dict.fromkeys(NAMES, "skipped")
    for name in NAMES:
        assert f"skip {name} ({KINDS[name]}): inputs and config unchanged" in err
    assert second["seconds"] < 0.2 * first["seconds"]
    assert [r["fingerprint"] for r in second["stages"]] == [r["fingerprint"] for r in first["stages"]]

    # a new SFT learning rate changes the SFT model, which every later stage reads
    changed = run_pipeline(path, "sft.lr=1e-3")
    assert statuses(changed) == dict.fromkeys(NAMES, "ran")
    reasons = {row["name"]: row["reason"] for row in changed["stages"]}
    assert reasons["sft"] == "config changed"
    assert reasons["pairs"].startswith("input changed: model")
    assert all(a["fingerprint"] != b["fingerprint"] for a, b in zip(first["stages"], changed["stages"]))

    forced = run_pipeline(path, "sft.lr=1e-3", "force=[dpo]")
    assert statuses(forced) == {"sft": "skipped", "pairs": "skipped", "reward": "skipped", "dpo": "ran"}

    # a stage that fails leaves no marker, so the next run does it again (and only it)
    def crash(config):
        raise RuntimeError("disk full")

    monkeypatch.setattr("rlhfkit.stages.dpo.run", crash)
    with pytest.raises(RuntimeError):
        run_pipeline(path, "sft.lr=1e-3", force=("dpo",))
    assert not (run_dir / "dpo" / pipeline.MARKER).exists()
    assert statuses(json.loads((run_dir / "pipeline.json").read_text()))["dpo"] == "failed"
    monkeypatch.undo()
    again = run_pipeline(path, "sft.lr=1e-3")
    assert statuses(again) == {"sft": "skipped", "pairs": "skipped", "reward": "skipped", "dpo": "ran"}


def test_crashed_online_rl_stage_resumes_only_its_own_run(tmp_path):
    spec = {
        "output_dir": str(tmp_path / "run"),
        "stages": [{"name": "ppo", "stage": "ppo", "config": {"rewards": [{"function": "default"}], "steps": 4}}],
    }
    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(spec))
    stage = pipeline.load_pipeline(path).stages[0]
    checkpoint = stage.out / "checkpoints" / "step-000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.pt").write_bytes(b"state")

    (stage.out / pipeline.RUNNING).write_text(json.dumps({"fingerprint": "abc"}))
    assert pipeline.prepare(stage, "abc").resume is True  # the interrupted run with this fingerprint continues
    assert checkpoint.is_dir()
    assert pipeline.prepare(stage, "def").resume is False  # another config: its checkpoints would be wrong to resume
    assert not (stage.out / "checkpoints").exists()


def write_pipeline(tmp_path: Path, stages: list[dict]) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": stages}, sort_keys=False))
    return path


SFT = {"name": "sft", "stage": "sft", "config": {}}
DPO = {"name": "dpo", "stage": "dpo", "config": {"model": "${sft}/model", "data": "p.jsonl"}}


@pytest.mark.parametrize(
    "stages, overrides, fragment",
    [
        ([SFT, {"name": "x", "stage": "dpoo"}], [], "stage 'x': unknown stage kind 'dpoo'"),
        ([SFT, {**DPO, "config": {**DPO["config"], "betaa": 0.2}}], [], "stage 'dpo' (dpo): unknown key 'betaa'"),
        ([SFT, DPO], ["dpo.betaa=0.2"], "stage 'dpo' (dpo): unknown key 'betaa'"),
        ([SFT, DPO], ["dpo.beta=-1"], "stage 'dpo' (dpo): key 'beta'"),
        (
            [{**DPO, "config": {**DPO["config"], "model": "${late}/model"}}, {**SFT, "name": "late"}],
            [],
            "stage 'dpo' (dpo): model refers to ${late}, which runs later",
        ),
        (
            [SFT, {**DPO, "config": {**DPO["config"], "model": "${nope}/model"}}],
            [],
            "refers to ${nope}, which is not a stage",
        ),
        ([SFT, SFT], [], "stage 'sft' appears twice"),
        ([SFT, DPO], ["dop.beta=0.2"], "override 'dop...': not a pipeline key"),
        ([SFT, DPO], ["force=[ppo]"], "force names 'ppo'"),
        (
            [SFT, {"name": "gate", "stage": "gate", "config": {"thresholds": {"mean_gold": ">= 0.4"}}}],
            [],
            "stage 'gate' (gate): a gate needs checkpoint",
        ),
        ([SFT, {**DPO, "config": {**DPO["config"], "output_dir": "{root}/sft"}}], [], "stage 'dpo': output_dir"),
    ],
)
def test_bad_pipeline_fails_before_any_folder(tmp_path, stages, overrides, fragment):
    stages = json.loads(json.dumps(stages).replace("{root}", str(tmp_path / "run")))
    path = write_pipeline(tmp_path, stages)
    with pytest.raises(ConfigError) as info:
        pipeline.run(pipeline.load_pipeline(path, overrides))
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert not (tmp_path / "run").exists()


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLHFKIT_NO_PROGRESS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", "run", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_runs_the_example_pipeline_end_to_end(tmp_path, cli_in_process):
    example = str(DEMO_PIPELINE)  # the demo pipeline shipped with the package
    run_dir = tmp_path / "run"
    tiny = [
        f"output_dir={run_dir}",
        "sft.max_steps=2",
        "sft.val_fraction=0.01",
        "pairs.num_prompts=16",
        "pairs.max_new_tokens=24",
        "reward.max_steps=2",
        "reward.eval_every=2",
        "dpo.max_steps=2",
        "dpo.eval_every=2",
        "ppo.steps=2",
        "ppo.batch_size=2",
        "ppo.mini_batch_size=2",
        "ppo.max_new_tokens=12",
        "ppo.save_every=2",
        "bon_sweep.num_prompts=2",
        "bon_sweep.max_n=4",
        "bon_sweep.max_new_tokens=12",
        "bon_sweep.bootstrap=10",
        "bon_sweep_length.max_n=4",
        "bon_sweep_length.bootstrap=10",
        "eval.num_prompts=4",
        "eval.samples_per_prompt=1",
        "eval.max_new_tokens=24",
        "eval.safety_prompts=null",
        "gate.thresholds=[mean_gold >= -1]",
    ]

    done = cli(example, *tiny)
    assert done.returncode == 0, done.stderr
    result = json.loads((run_dir / "pipeline.json").read_text())
    assert [row["status"] for row in result["stages"]] == ["ran"] * 10 and result["passed"]
    assert (run_dir / "registry.sqlite").is_file() and (run_dir / "gate" / "gate.json").is_file()
    assert result["report"] == str(run_dir / "report.html") and (run_dir / "report.html").is_file()

    plan = cli(example, *tiny, "--force", "gate", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    lines = [line for line in plan.stderr.splitlines() if line[:1].isdigit()]
    assert len(lines) == 10 and all(" skip " in line for line in lines[:9]) and "run   gate (gate): forced" in lines[9]
    assert json.loads((run_dir / "pipeline.json").read_text()) == result  # a dry run writes nothing

    bad = cli_in_process("run", example, *tiny, "dpo.betaa=0.2")  # in this process: no second interpreter start
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"error: {example}: stage 'dpo' (dpo): unknown key 'betaa'"]
