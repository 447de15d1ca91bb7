"""`report_to`: each tracker's own library writes its local files, and what it logged (read back with that library's
reader, or the format's) equals metrics.jsonl, along with the config, run name and tags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "rlhfkit.cli"]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in rows(run_dir) if key in row]


def assert_same_series(logged: list[tuple[int, float]], expected: list[tuple[int, float]], rel: float = 1e-6) -> None:
    """Same steps, same values (trackers may store float32)."""
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=rel)


def wandb_history(run_file: Path) -> list[dict]:
    """History rows of an offline W&B run file (`run-ID.wandb`): a LevelDB-style log of protobuf Records, 32 KiB
    blocks of chunks with 7-byte headers (checksum, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending, history = 7, 32768, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # the rest of a block too short for a header is padding
            position += left
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        if record.WhichOneof("record_type") == "history":
            history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return history


@pytest.fixture(scope="module")
def tracked_sft(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    out = root / "sft"
    env = {**os.environ, "WANDB_MODE": "offline", "TRACKIO_DIR": str(root / "trackio")}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [
            *CLI,
            "sft",
            f"output_dir={out}",
            "max_steps=4",
            "log_every=1",
            "eval_every=2",
            "batch_size=4",
            "val_fraction=0.05",
            "threads=1",
            "report_to=[tensorboard,wandb,mlflow,trackio]",
            "run_name=tracked",
            "tags=[smoke,cpu]",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return out, root, env


def test_tensorboard_event_files_hold_the_metrics_jsonl_series(tracked_sft):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = tracked_sft
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [s for s, _ in logged] == [1, 2, 3, 4]
    assert_same_series(logged, series(out, "loss"))
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"run_name": "tracked"' in config_text and '"max_steps": 4' in config_text


def test_mlflow_store_holds_the_series_params_and_tags(tracked_sft):
    from mlflow.tracking import MlflowClient

    out, _, _ = tracked_sft
    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("rlhfkit").experiment_id])
    assert run.info.run_name == "tracked" and {"smoke", "cpu"} <= set(run.data.tags)
    assert run.data.params["max_steps"] == "4" and run.data.params["lr"] == "0.0003"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert_same_series(history, series(out, "loss"))
    val = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss"))
    assert_same_series(val, series(out, "val_loss")) and len(val) >= 2


def test_wandb_offline_run_holds_the_series(tracked_sft):
    out, _, _ = tracked_sft
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(run_file)
    logged = [(row["_step"], row["loss"]) for row in history if "loss" in row]
    assert_same_series(logged, series(out, "loss"))


def test_trackio_local_store_holds_the_series(tracked_sft):
    out, root, env = tracked_sft
    read = (
        "import json; from trackio.sqlite_storage import SQLiteStorage; "
        "print(json.dumps(SQLiteStorage.get_logs('rlhfkit', 'tracked')))"
    )
    done = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    logged = [(row["step"], row["loss"]) for row in json.loads(done.stdout.strip().splitlines()[-1]) if "loss" in row]
    assert_same_series(logged, series(out, "loss"))


def test_an_online_stage_reports_its_rows_with_rolling_means(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "grpo"
    done = subprocess.run(
        [
            *CLI,
            "grpo",
            "rewards=[{function: default}]",
            "steps=2",
            "batch_size=2",
            "group_size=2",
            "mini_batch_size=4",
            "max_new_tokens=8",
            "threads=1",
            f"output_dir={out}",
            "report_to=[tensorboard]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for key in ("reward", "reward_avg", "kl", "policy_loss"):
        assert_same_series([(e.step, e.value) for e in events.Scalars(key)], series(out, key))


def test_a_tracker_that_is_not_installed_is_one_clear_error(tmp_path):
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "wandb.py").write_text("raise ImportError('hidden for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [*CLI, "sft", f"output_dir={tmp_path / 'x'}", "max_steps=1", "report_to=[wandb]"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: report_to wandb: the package wandb is not installed (pip install wandb)"
    )
    bad = subprocess.run(
        [*CLI, "sft", f"output_dir={tmp_path / 'y'}", "report_to=[neptune]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "report_to.0" in bad.stderr
