"""Every bad input a user can make gets one line naming where and what, a non-zero exit, and no output file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RLHFKIT = [sys.executable, "-m", "rlhfkit.cli"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLHFKIT_NO_PROGRESS": "1"}
    return subprocess.run([*RLHFKIT, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"prompt": "How are you?", "chosen": "Fine, thanks.", "rejected": "Go away."})


@pytest.mark.parametrize(
    "bad_line, fragments",
    [
        ('{"prompt": "hi", "chosen": "a", ', ["bad.jsonl:2", "not valid JSON"]),
        (json.dumps({"prompt": "hi", "chosen": "a"}), ["bad.jsonl:2", "'rejected'", "missing"]),
        (json.dumps({"prompt": "hi", "chosen": 3, "rejected": "b"}), ["bad.jsonl:2", "'chosen'", "expected a string"]),
        (json.dumps({"prompt": "hi", "chosen": "  ", "rejected": "b"}), ["bad.jsonl:2", "'chosen'", "empty"]),
        (
            json.dumps({"prompt": "hi", "chosen": "same", "rejected": "same"}),
            ["bad.jsonl:2", "'rejected'", "identical"],
        ),
    ],
    ids=["broken-json", "missing-field", "wrong-type", "empty-response", "identical"],
)
def test_validate_reports_file_line_and_field(tmp_path, bad_line, fragments):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, bad_line, GOOD])
    assert_one_line_error(run_cli("data", "validate", str(path), "--kind", "preference"), *fragments)


@pytest.mark.parametrize(
    "bad_line, fragments",
    [
        ('{"prompt": "hi", "chosen": "a", ', ["bad.jsonl:2", "not valid JSON"]),
        (json.dumps({"prompt": "hi", "chosen": "same", "rejected": "same"}), ["bad.jsonl:2", "identical"]),
    ],
    ids=["broken-json", "identical"],
)
def test_import_fails_whole_and_writes_nothing(tmp_path, bad_line, fragments):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, bad_line])
    out = tmp_path / "out.jsonl"
    assert_one_line_error(run_cli("data", "import", str(path), "--format", "trl", "--out", str(out)), *fragments)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_import_keeps_existing_output_on_error(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, "{oops"])
    assert_one_line_error(run_cli("data", "import", str(path), "--format", "trl", "--out", str(out)), "bad.jsonl:2")
    assert out.read_text() == "precious\n"


def test_unknown_import_format(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [GOOD])
    assert_one_line_error(
        run_cli("data", "import", str(path), "--format", "csvish", "--out", str(tmp_path / "o.jsonl")),
        "unknown import format 'csvish'",
    )


def test_validate_and_import_good_file(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [GOOD, GOOD])
    result = run_cli("data", "validate", str(path))
    assert result.returncode == 0 and "2 valid preference records" in result.stdout
    out = tmp_path / "out.jsonl"
    result = run_cli("data", "import", str(path), "--format", "trl", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 2


def test_missing_model_directory(tmp_path):
    data = write_lines(tmp_path / "ok.jsonl", [GOOD])
    result = run_cli(
        "reward", "train", f"model={tmp_path / 'nowhere'}", f"data={data}", f"output_dir={tmp_path / 'run'}"
    )
    assert_one_line_error(result, "model directory", "nowhere", "not found")


def test_model_directory_without_config(tmp_path):
    (tmp_path / "empty_model").mkdir()
    data = write_lines(tmp_path / "ok.jsonl", [GOOD])
    result = run_cli("dpo", f"model={tmp_path / 'empty_model'}", f"data={data}", f"output_dir={tmp_path / 'run'}")
    assert_one_line_error(result, "empty_model", "config.json")


def test_unknown_config_key_on_command_line(tmp_path):
    assert_one_line_error(run_cli("sft", "learning_rate=1e-4"), "unknown key 'learning_rate'")


def test_unknown_config_key_in_file(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("lr: 1.0e-4\nlora:\n  rank: 8\n")
    assert_one_line_error(run_cli("sft", "--config", str(config)), "sft.yaml", "unknown key 'lora.rank'")


def test_wrong_type_config_value():
    assert_one_line_error(run_cli("sft", "--lr", "fast"), "key 'lr'")


def test_missing_config_file(tmp_path):
    assert_one_line_error(run_cli("sft", "--config", str(tmp_path / "none.yaml")), "none.yaml", "not found")


def test_bad_demo_override_fails_before_any_work(tmp_path):
    result = run_cli("demo", f"output_dir={tmp_path / 'demo'}", "dpo.loss_type=magic")
    assert_one_line_error(result, "dpo", "loss_type")
    assert not (tmp_path / "demo" / "sft").exists()
