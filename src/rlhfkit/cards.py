"""Model cards: the README.md in every model directory rlhfkit saves, in the Hub's format (YAML metadata written by
huggingface_hub's ModelCardData: base_model, library_name, tags, datasets where they are Hub ids), then what made
the model: the stage, where it started, its data, the figures of its summary and the resolved config. `rlhfkit
export` adds the checkpoint registry's record: evaluation, gate result and lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .resolve import is_hub_id

DATA_KEYS = ("data", "prompts")
START_KEYS = ("model", "ref_model")


def hub_id(name: Any) -> str | None:
    """`name` without its revision when it reads as a Hub id and is not a local path, else None."""
    if not isinstance(name, str) or not is_hub_id(name):
        return None
    return name.partition("@")[0]


def dataset_id(name: Any) -> str | None:
    return hub_id(name.split(":")[0]) if isinstance(name, str) else None


def figures(summary: dict[str, Any]) -> list[str]:
    """The summary's top-level numbers and short strings, as `key: value` lines."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, float):
            lines.append(f"- {key}: {value:.4g}")
        elif isinstance(value, (int, str)) and not isinstance(value, bool) and len(str(value)) < 120:
            lines.append(f"- {key}: {value}")
    return lines


def card_base_model(model: Any) -> str | None:
    """The `base_model` in the card of a local model directory (one an earlier rlhfkit stage saved), so a chain of
    stages started from a Hub id keeps naming it: SFT from `org/name`, then DPO from the SFT folder."""
    if not isinstance(model, str) or not (Path(model) / "README.md").is_file():
        return None
    text = (Path(model) / "README.md").read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return None
    try:
        meta = yaml.safe_load(text[4 : text.index("\n---", 4)])
    except yaml.YAMLError:
        return None
    base = meta.get("base_model") if isinstance(meta, dict) else None
    return base if isinstance(base, str) else None


def model_card(stage: str, config, summary: dict[str, Any] | None = None) -> str:
    """The card text of a model a stage saves (config: the stage's validated config)."""
    from huggingface_hub import ModelCardData

    values = config.model_dump(mode="json")
    starts = [values.get(key) for key in START_KEYS]
    base = next((b for b in (hub_id(m) or card_base_model(m) for m in starts) if b), None)
    datasets = sorted({d for d in (dataset_id(values.get(key)) for key in DATA_KEYS) if d})
    data = ModelCardData(
        base_model=base, library_name="transformers", tags=["rlhfkit", stage], datasets=datasets or None
    )
    name = Path(values.get("output_dir", "model")).name
    started = [f"- {key}: `{values[key]}`" for key in START_KEYS if values.get(key)]
    sources = [f"- {key}: `{values[key]}`" for key in DATA_KEYS if isinstance(values.get(key), str)]
    sections = [
        f"# {name}",
        f"Trained with rlhfkit's `{stage}` stage (`rlhfkit {stage.replace('-', ' ')} --config config.yaml`, with the "
        "config below). A plain Hugging Face directory: `transformers` loads it as it is.",
        "## Started from\n\n" + ("\n".join(started) or "- (none)"),
        "## Data\n\n" + ("\n".join(sources) or "- (none)"),
    ]
    if summary:
        sections.append("## Results\n\n" + ("\n".join(figures(summary)) or "- (none)"))
    sections.append("## Config\n\n```yaml\n" + yaml.safe_dump(values, sort_keys=False).rstrip() + "\n```")
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def registry_section(checkpoint) -> str:
    """What the checkpoint registry knows of a checkpoint (a rlhfkit.evaluate.registry.Checkpoint)."""
    lines = [
        f"## Registry\n\nCheckpoint #{checkpoint.id}, registered {checkpoint.created}; "
        + ("current" if checkpoint.current else "not current")
        + "."
    ]
    if checkpoint.gate is not None:
        gate = checkpoint.gate
        rows = "\n".join(
            f"| {r.metric} | {r.op} {r.value} | {r.measured} | {'pass' if r.passed else 'FAIL'} |" for r in gate.rows
        )
        lines.append(
            f"### Gate: {'PASSED' if gate.passed else 'FAILED'}\n\n| metric | bound | measured | result |\n"
            f"|---|---|---|---|\n{rows}"
        )
    if checkpoint.metrics:
        lines.append("### Evaluation\n\n" + "\n".join(figures(checkpoint.metrics)))
    if checkpoint.lineage:
        lines.append("### Lineage\n\n```json\n" + json.dumps(checkpoint.lineage, indent=2, default=str) + "\n```")
    return "\n\n".join(lines) + "\n"
