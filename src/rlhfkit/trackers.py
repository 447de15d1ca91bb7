"""Experiment trackers, for `report_to: [tensorboard, wandb, mlflow, trackio]`: the same rows as metrics.jsonl (the
numeric values, at the row's step), plus the resolved config, the run name and tags. Each tracker's library is
imported only when asked for; a missing one is a one-line ConfigError naming the package to install.

Where each writes, unless its own environment variables say otherwise:
- tensorboard: OUTPUT_DIR/tensorboard (event files; `tensorboard --logdir OUTPUT_DIR/tensorboard`);
- wandb: OUTPUT_DIR/wandb, online or offline as WANDB_MODE says, project WANDB_PROJECT or 'rlhfkit';
- mlflow: MLFLOW_TRACKING_URI, else the SQLite store OUTPUT_DIR/mlflow.db; experiment MLFLOW_EXPERIMENT_NAME or
  'rlhfkit';
- trackio: TRACKIO_DIR (default ~/.cache/huggingface/trackio), project TRACKIO_PROJECT or 'rlhfkit'.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")


def require(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"report_to {name}: the package {name} is not installed (pip install {name})") from None


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {a.b: value}; lists and None as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return flat


class TensorBoard:
    def __init__(self, run_dir: Path, name: str, config: dict, tags: list[str]):
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")
        self.writer.add_text("run", f"name: {name}; tags: {', '.join(tags) or 'none'}")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run_dir: Path, name: str, config: dict, tags: list[str]):
        wandb = require("wandb")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "rlhfkit"),
            name=name,
            config=config,
            tags=tags or None,
            dir=str(run_dir),
            reinit="create_new",
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, run_dir: Path, name: str, config: dict, tags: list[str]):
        mlflow = require("mlflow")
        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri(f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "rlhfkit"))
        self.run = mlflow.start_run(run_name=name, tags={tag: "" for tag in tags})
        # MLflow caps a parameter's value at 6,000 characters
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(config).items()})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class Trackio:
    def __init__(self, run_dir: Path, name: str, config: dict, tags: list[str]):
        self.trackio = require("trackio")
        self.run = self.trackio.init(
            project=os.environ.get("TRACKIO_PROJECT", "rlhfkit"),
            name=name,
            config={**config, "tags": tags},
            embed=False,
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.trackio.log(metrics, step=step)

    def close(self) -> None:
        self.trackio.finish()


KINDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow, "trackio": Trackio}


class Trackers:
    """The trackers a run reports to; `log` sends every one the numeric metrics of a row."""

    def __init__(self, report_to: list[str], run_dir: Path, name: str, config: dict, tags: list[str]):
        unknown = [t for t in report_to if t not in KINDS]
        if unknown:
            raise ConfigError(f"report_to: unknown tracker {unknown[0]!r}; expected any of {', '.join(TRACKERS)}")
        self.open = [KINDS[kind](run_dir, name, config, tags) for kind in dict.fromkeys(report_to)]

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        values = numeric(metrics)
        for tracker in self.open:
            tracker.log(step, values)

    def close(self) -> None:
        for tracker in self.open:
            tracker.close()
        self.open = []
