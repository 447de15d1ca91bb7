"""`rlhfkit gate`, `registry list`, `rollback` and `detect` as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlhfkit.resolve import resolve_model_path


@pytest.fixture
def cli(cli_in_process):
    """`rlhfkit ARGS...` run in this process (tests/conftest.py): its exit code, stdout and stderr."""
    return cli_in_process


def make_checkpoints(root: Path, names: list[str]) -> dict[str, Path]:
    default = resolve_model_path("default")
    paths = {}
    for name in names:
        paths[name] = root / name / "model"
        shutil.copytree(default, paths[name])
    return paths


def test_gate_exit_codes_registry_and_rollback(tmp_path, cli):
    paths = make_checkpoints(tmp_path, ["good", "bad", "better"])
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(
        json.dumps(
            {
                "results": {
                    "good": {"model": str(paths["good"]), "mean_gold": 0.6, "distinct_2": 0.12},
                    "bad": {"model": str(paths["bad"]), "mean_gold": 0.1, "distinct_2": 0.12},
                    "better": {"model": str(paths["better"]), "mean_gold": 0.7, "distinct_2": 0.13},
                }
            }
        )
    )
    gate_yaml = tmp_path / "gate.yaml"
    gate_yaml.write_text(
        f"thresholds:\n  mean_gold: '>= 0.5'\n  distinct_2: '>= 0.1'\nmetrics: {eval_json}\nregistry: {tmp_path}\n"
    )

    good = cli("gate", str(paths["good"]), "--config", str(gate_yaml))
    assert good.returncode == 0, good.stderr
    assert "PASS" in good.stderr and "0.6" in good.stderr
    bad = cli("gate", str(paths["bad"]), "--config", str(gate_yaml))
    assert bad.returncode == 1
    assert "FAIL" in bad.stderr and "mean_gold" in bad.stderr and "0.1" in bad.stderr
    assert (tmp_path / "current").resolve() == paths["good"].resolve()  # a failing checkpoint does not become current
    assert cli("gate", str(paths["better"]), "--config", str(gate_yaml)).returncode == 0
    assert (tmp_path / "current").resolve() == paths["better"].resolve()
    gate_json = json.loads((paths["better"].parent / "gate" / "gate.json").read_text())
    assert gate_json["passed"] and gate_json["metrics"]["mean_gold"] == 0.7

    listing = cli("registry", "list", "--root", str(tmp_path))
    assert listing.returncode == 0
    lines = [line for line in listing.stdout.splitlines() if "/model" in line]
    assert len(lines) == 3 and lines[-1].startswith("*") and "FAIL" in lines[1]

    back = cli("rollback", "--root", str(tmp_path))
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "current").resolve() == paths["good"].resolve()  # skips the failing one
    again = cli("rollback", "--root", str(tmp_path))
    assert again.returncode != 0 and again.stderr.startswith("error: ")
    assert (tmp_path / "current").resolve() == paths["good"].resolve()


def test_gate_evaluates_the_checkpoint_when_no_metrics_are_given(tmp_path, cli):
    paths = make_checkpoints(tmp_path, ["policy"])
    result = cli(
        "gate",
        str(paths["policy"]),
        "thresholds={mean_gold: '>= -1.0', mean_length: '>= 1'}",
        "eval.num_prompts=4",
        "eval.max_new_tokens=16",
        f"registry={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    gate_json = json.loads((tmp_path / "policy" / "gate" / "gate.json").read_text())
    assert gate_json["passed"] and -1.0 <= gate_json["metrics"]["mean_gold"] <= 1.0
    assert (tmp_path / "policy" / "gate" / "eval" / "eval.json").is_file()


def test_gate_bad_threshold_is_one_line_error(tmp_path, cli):
    paths = make_checkpoints(tmp_path, ["policy"])
    result = cli("gate", str(paths["policy"]), "thresholds={mean_gold: 'at least 0.4'}")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "mean_gold" in result.stderr


def test_detect_fires_on_a_blowing_up_run_and_not_on_a_healthy_one(tmp_path, cli):
    def write(path: Path, rows: list[dict]) -> Path:
        path.mkdir()
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    healthy = write(
        tmp_path / "healthy",
        [
            {
                "step": s,
                "reward": 0.05 * s,
                "gold": 0.03 * s,
                "kl": min(3.0, 0.1 * s),
                "response_length": 25 + 0.05 * s,
                "distinct_2": 0.55,
            }
            for s in range(1, 41)
        ],
    )
    hacked = write(
        tmp_path / "hacked",
        [
            {
                "step": s,
                "reward": 0.05 * s,
                "gold": 0.5,
                "kl": 0.05 * s * s,
                "response_length": 25 + s,
                "distinct_2": 0.55,
            }
            for s in range(1, 41)
        ],
    )
    ok = cli("detect", str(healthy), "--strict")
    assert ok.returncode == 0 and "FIRED" not in ok.stdout
    fired = cli("detect", str(hacked), "--strict")
    assert fired.returncode == 1 and "FIRED  length_drift" in fired.stdout and "FIRED  kl_blowup" in fired.stdout
