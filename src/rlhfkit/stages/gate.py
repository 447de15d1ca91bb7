"""`rlhfkit gate CHECKPOINT`: evaluate a checkpoint (or read its eval.json), check the acceptance envelope,
record the checkpoint with its metrics, gate result and lineage in the run root's registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..atomic import write_json
from ..config import EvalConfig, GateConfig, build_config, save_config
from ..console import console
from ..errors import ConfigError
from ..evaluate.gate import GateResult, GateSettings, evaluate_gate, format_gate
from ..evaluate.registry import Registry, update_current_link


def registry_root(checkpoint: Path, configured: str | None) -> Path:
    return Path(configured) if configured else checkpoint.resolve().parent.parent


def lineage_of(checkpoint: Path, extra: dict[str, Any]) -> dict[str, Any]:
    lineage: dict[str, Any] = {"checkpoint": str(checkpoint)}
    stage_config = checkpoint.parent / "config.yaml"
    if stage_config.is_file():
        values = yaml.safe_load(stage_config.read_text()) or {}
        lineage["config"] = str(stage_config)
        for key in ("model", "ref_model", "data", "rewards", "prompts"):
            if values.get(key) is not None:
                lineage[key] = values[key]
    lineage.update(extra)
    return lineage


def measured_metrics(config: GateConfig, checkpoint: Path, out: Path) -> dict[str, Any]:
    if config.metrics:
        path = Path(config.metrics)
        if not path.is_file():
            raise ConfigError(f"metrics: '{path}' not found")
        results = json.loads(path.read_text()).get("results", {})
        if config.model_name:
            if config.model_name not in results:
                raise ConfigError(f"model_name '{config.model_name}': {path} has rows {', '.join(results)}")
            return results[config.model_name]
        for row in results.values():
            if Path(row.get("model", "")).resolve() == checkpoint.resolve():
                return row
        raise ConfigError(f"{path}: no row evaluates {checkpoint}; set model_name to one of {', '.join(results)}")
    from ..evaluate import policy

    models = ({"baseline": config.baseline} if config.baseline else {}) | {"candidate": str(checkpoint)}
    eval_config = build_config(
        EvalConfig, {"output_dir": str(out / "eval"), **config.eval, "models": models}, source="gate config, eval"
    )
    return policy.run(eval_config)["candidate"]


def run(config: GateConfig, checkpoint: str) -> GateResult:
    settings = build_config(GateSettings, {"thresholds": config.thresholds}, source="gate config")
    path = Path(checkpoint)
    if not (path / "config.json").is_file():
        raise ConfigError(f"checkpoint '{checkpoint}': not a model directory (no config.json)")
    out = Path(config.output_dir) if config.output_dir else path.parent / "gate"
    save_config(config, out)
    metrics = measured_metrics(config, path, out)
    result = evaluate_gate(metrics, settings)
    console.print(format_gate(result))
    root = registry_root(path, config.registry)
    registry = Registry(root)
    # A failing checkpoint is recorded but does not replace the current one.
    checkpoint_id = registry.register(
        str(path), metrics=metrics, gate=result, lineage=lineage_of(path, config.lineage), make_current=result.passed
    )
    if result.passed:
        update_current_link(root, str(path.resolve()))
    write_json(
        out / "gate.json",
        {"checkpoint": str(path), "registry": str(root), "id": checkpoint_id, **result.to_dict(), "metrics": metrics},
    )
    console.print(f"registered as #{checkpoint_id} in {registry.path}; gate {'PASSED' if result.passed else 'FAILED'}")
    return result
