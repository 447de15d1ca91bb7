"""`rlhfkit run PIPELINE.yaml`: every stage from one YAML, in order, with cached and resumable artifacts.

A stage's fingerprint is the sha256 of its kind, its resolved config and the content of every existing file or
folder its config names (models, data, prompts, reward models, the gate's checkpoint). After a stage finishes,
`OUTPUT_DIR/.rlhfkit-stage.json` records the fingerprint and a hash of what the stage wrote. The next run skips a
stage whose fingerprint and outputs still match; since a downstream fingerprint hashes the upstream artifacts,
a stage whose upstream produced different files runs again. A failed stage leaves no marker; a training stage
that crashed resumes from its own checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from .atomic import check_writable, write_json
from .config import PipelineConfig, Strict, build_config, deep_merge, parse_overrides, read_yaml
from .console import console, say
from .errors import ConfigError
from .stages import STAGES

MARKER = ".rlhfkit-stage.json"
RUNNING = ".rlhfkit-running.json"
# keys naming where a stage writes, never what it reads; `db` is a live store that a flywheel stage reads through a
# window fixed in its config, so its bytes changing (new traffic, new judgments) does not make the stage rerun
NOT_INPUTS = ("output_dir", "registry", "db")
SUMMARY_FILES = ("summary.json", "eval.json", "sweep.json", "frontier.json", "gate.json", "judge.json")
REFERENCE = re.compile(r"\$\{([^}]*)\}")
STAGE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class StageEntry(Strict):
    name: str = Field(..., description="unique name; the stage's folder (OUTPUT_DIR/NAME) and its ${NAME}")
    stage: str = Field(..., description="stage kind: " + ", ".join(STAGES))
    config: dict[str, Any] = Field(
        default_factory=dict, description="the stage's keys, as in `rlhfkit config show STAGE`"
    )
    checkpoint: str | None = Field(None, description="gate only: the model directory to check")


@dataclass
class Stage:
    name: str
    kind: str
    config: Strict  # validated, ${NAME} references replaced
    checkpoint: str | None
    uses: list[str]  # earlier stages it references

    @property
    def out(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.kind})"


@dataclass
class Pipeline:
    source: str
    output_dir: Path
    stages: list[Stage]
    force: list[str]
    resolved: dict[str, Any]  # the pipeline with overrides merged, references kept (written to pipeline.yaml)
    report: bool = False  # build OUTPUT_DIR/report.html when the run ends


@dataclass
class StageRecord:
    name: str
    stage: str
    output_dir: str
    status: str = "not run"  # ran, skipped, failed, not run (dry run: run, skip, maybe)
    reason: str = ""
    fingerprint: str | None = None
    seconds: float = 0.0
    summary: str | None = None
    passed: bool | None = None  # gate stages only
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ loading


def load_pipeline(path: str | Path, overrides: list[str] | dict | None = None, force: Sequence[str] = ()) -> Pipeline:
    """Read, override and validate the whole pipeline; any problem is one ConfigError before any work or folder."""
    source = str(path)
    raw = read_yaml(path)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    overrides = dict(overrides or {})
    top_overrides = {k: overrides.pop(k) for k in list(overrides) if k in PipelineConfig.model_fields}
    top = build_config(PipelineConfig, deep_merge(raw, top_overrides), source=source)
    if not top.stages:
        raise ConfigError(f"{source}: stages is empty; give at least one {{name, stage, config}}")
    entries = [build_config(StageEntry, entry, source=f"{source}: stages[{i}]") for i, entry in enumerate(top.stages)]
    check_entries(source, entries)
    apply_stage_overrides(entries, overrides)

    root = Path(top.output_dir)
    stages: list[Stage] = []
    outputs: dict[str, str] = {}
    order = {entry.name: i for i, entry in enumerate(entries)}
    for i, entry in enumerate(entries):
        where = f"{source}: stage '{entry.name}' ({entry.stage})"
        if STAGES[entry.stage].checkpoint != (entry.checkpoint is not None):
            raise ConfigError(
                f"{where}: "
                + (
                    "a gate needs checkpoint: MODEL_DIR (e.g. ${dpo}/model)"
                    if STAGES[entry.stage].checkpoint
                    else "checkpoint is a gate key; put this stage's keys under config"
                )
            )
        values = dict(entry.config)
        if values.get("output_dir") is None:
            values["output_dir"] = str(root / entry.name)
        uses: list[str] = []
        # map_strings calls the lambda before the loop moves on, so binding the loop variables late is safe
        values = map_strings(
            values,
            lambda text, key: substitute(text, key, where, entry.name, i, order, outputs, uses),  # noqa: B023
        )
        checkpoint = (
            substitute(entry.checkpoint, "checkpoint", where, entry.name, i, order, outputs, uses)
            if entry.checkpoint is not None
            else None
        )
        config = build_config(STAGES[entry.stage].config, values, source=where)
        outputs[entry.name] = str(config.output_dir)
        stages.append(Stage(entry.name, entry.stage, config, checkpoint, uses))

    check_output_dirs(source, root, stages)
    forced = list(dict.fromkeys([*top.force, *force]))
    unknown = [name for name in forced if name not in order]
    if unknown:
        raise ConfigError(
            f"{source}: force names {', '.join(repr(n) for n in unknown)}, not a stage of this pipeline (stages: "
            f"{', '.join(order)})"
        )
    resolved = {
        "output_dir": top.output_dir,
        "report": top.report,
        "stages": [
            {
                "name": e.name,
                "stage": e.stage,
                "config": e.config,
                **({"checkpoint": e.checkpoint} if e.checkpoint is not None else {}),
            }
            for e in entries
        ],
    }
    return Pipeline(source, root, stages, forced, resolved, top.report)


def check_entries(source: str, entries: list[StageEntry]) -> None:
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not STAGE_NAME.fullmatch(entry.name) or entry.name in PipelineConfig.model_fields:
            raise ConfigError(
                f"{source}: stages[{i}]: name '{entry.name}': use letters, digits, '_' or '-' (starting with a "
                "letter), "
                f"and not {', '.join(PipelineConfig.model_fields)}"
            )
        if entry.name in seen:
            raise ConfigError(
                f"{source}: stage '{entry.name}' appears twice (stages[{seen[entry.name]}] and stages[{i}]); names "
                "must be unique"
            )
        seen[entry.name] = i
        if entry.stage not in STAGES:
            raise ConfigError(
                f"{source}: stage '{entry.name}': unknown stage kind '{entry.stage}'; expected one of "
                f"{', '.join(STAGES)}"
            )


def apply_stage_overrides(entries: list[StageEntry], overrides: dict[str, Any]) -> None:
    """`NAME.KEY=VALUE` goes into stage NAME's config (`NAME.checkpoint` into a gate's checkpoint)."""
    # parse_overrides turns '-' into '_' in keys, so a stage named reward-eval answers to reward_eval too
    by_key = {entry.name.replace("-", "_"): entry for entry in entries} | {entry.name: entry for entry in entries}
    for key, value in overrides.items():
        entry = by_key.get(key)
        if entry is None:
            raise ConfigError(
                f"override '{key}...': not a pipeline key ({', '.join(PipelineConfig.model_fields)}) "
                f"nor a stage name ({', '.join(e.name for e in entries)}); write NAME.KEY=VALUE"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"override '{key}={value}': stage '{entry.name}' takes {key}.KEY=VALUE")
        value = dict(value)
        if STAGES[entry.stage].checkpoint and "checkpoint" in value:
            entry.checkpoint = str(value.pop("checkpoint"))
        entry.config = deep_merge(entry.config, value)


def substitute(
    text: str,
    key: str,
    where: str,
    name: str,
    index: int,
    order: dict[str, int],
    outputs: dict[str, str],
    uses: list[str],
) -> str:
    """Replace each ${NAME} with that earlier stage's output_dir (recorded in `uses`); a self, unknown or later
    name is an error."""

    def one(match: re.Match) -> str:
        ref = match.group(1)
        if ref == name:
            raise ConfigError(f"{where}: {key} refers to ${{{ref}}}, the stage itself; use an earlier stage's name")
        if ref not in order:
            raise ConfigError(
                f"{where}: {key} refers to ${{{ref}}}, which is not a stage of this pipeline (stages: "
                f"{', '.join(order)})"
            )
        if order[ref] > index:
            raise ConfigError(
                f"{where}: {key} refers to ${{{ref}}}, which runs later (stage {order[ref] + 1} of {len(order)}); "
                "a stage can only use the outputs of earlier stages"
            )
        if ref not in uses:
            uses.append(ref)
        return outputs[ref]

    return REFERENCE.sub(one, text)


def map_strings(node: Any, fn, key: str = "") -> Any:
    """Apply fn(text, key) to every string inside nested dicts and lists."""
    if isinstance(node, dict):
        return {k: map_strings(v, fn, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [map_strings(v, fn, f"{key}[{i}]") for i, v in enumerate(node)]
    return fn(node, key) if isinstance(node, str) else node


def check_output_dirs(source: str, root: Path, stages: list[Stage]) -> None:
    """Each stage writes its own folder: not the run root, not inside or around another stage's."""
    resolved_root = root.resolve()
    for i, stage in enumerate(stages):
        out = stage.out.resolve()
        if out == resolved_root or out in resolved_root.parents:
            raise ConfigError(
                f"{source}: stage '{stage.name}': output_dir '{stage.out}' holds the whole run root '{root}'; "
                "give the stage a folder of its own"
            )
        for other in stages[:i]:
            theirs = other.out.resolve()
            if out == theirs or out in theirs.parents or theirs in out.parents:
                raise ConfigError(
                    f"{source}: stage '{stage.name}': output_dir '{stage.out}' overlaps stage '{other.name}' "
                    f"('{other.out}'); each stage needs a folder of its own"
                )


# ------------------------------------------------------------------------------------------ hashing


class ContentHasher:
    """sha256 of files and folders; a file's digest is reused within one run while its inode, size and mtime hold."""

    def __init__(self) -> None:
        self._files: dict[tuple, str] = {}

    def file(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in self._files:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            self._files[key] = digest.hexdigest()
        return self._files[key]

    def tree(self, path: Path) -> str:
        """A file's bytes, or a folder's relative paths and bytes; checkpoints/ and hidden (temporary) entries
        left out."""
        if path.is_file():
            return self.file(path)
        digest = hashlib.sha256()
        for rel, file in sorted(folder_files(path)):
            digest.update(f"{rel}\0{self.file(file)}\n".encode())
        return digest.hexdigest()


def folder_files(root: Path):
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "checkpoints"]
        for name in files:
            if not name.startswith("."):
                path = Path(folder) / name
                yield path.relative_to(root).as_posix(), path


def encloses(path: Path, other: Path) -> bool:
    return path == other or path in other.parents


def input_paths(stage: Stage, root: Path) -> dict[str, Path]:
    """Every string of the config (and the gate's checkpoint) that names an existing file or folder, by key."""
    found: dict[str, Path] = {}
    out, run_root = stage.out.resolve(), root.resolve()

    def visit(text: str, key: str) -> str:
        if key.split(".")[-1] in NOT_INPUTS or not text:
            return text
        try:
            path = Path(text)
            exists = path.exists()
        except (OSError, ValueError):  # not a path (too long, NUL byte)
            return text
        # never hash the stage's own output (or a folder holding it, or the whole run): it changes when the stage runs
        if exists and not (
            encloses(out, path.resolve()) or encloses(path.resolve(), out) or encloses(path.resolve(), run_root)
        ):
            found[key] = path
        return text

    map_strings(stage.config.model_dump(mode="json"), visit)
    if stage.checkpoint is not None:
        visit(stage.checkpoint, "checkpoint")
    return found


def config_digest(stage: Stage) -> str:
    return sha256_json(
        {"stage": stage.kind, "config": stage.config.model_dump(mode="json"), "checkpoint": stage.checkpoint}
    )


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ running


def why_run(
    stage: Stage,
    fingerprint: str,
    config_hash: str,
    inputs: dict[str, dict[str, str]],
    forced: bool,
    hasher: ContentHasher,
) -> str | None:
    """None when the stage can be skipped; otherwise the reason it runs."""
    if forced:
        return "forced"
    marker = read_json(stage.out / MARKER)
    if marker is None:
        return "no finished run yet"
    if marker.get("fingerprint") == fingerprint:
        if marker.get("outputs") != hasher.tree(stage.out):
            return "its outputs changed since it finished"
        return None
    if marker.get("config") != config_hash:
        return "config changed"
    before = marker.get("inputs", {})
    changed = [f"{key} ({value['path']})" for key, value in inputs.items() if before.get(key) != value]
    changed += [f"{key} (gone)" for key in before if key not in inputs]
    return "input changed: " + ", ".join(changed) if changed else "inputs changed"


def prepare(stage: Stage, fingerprint: str) -> Strict:
    """Clear the old marker, record the run in progress; a checkpointing stage resumes only its own interrupted run."""
    out = stage.out
    (out / MARKER).unlink(missing_ok=True)
    config = stage.config
    if "resume" in type(config).model_fields and not config.resume:
        from .checkpoints import latest_checkpoint

        checkpoint = latest_checkpoint(out)
        running = read_json(out / RUNNING) or {}
        if checkpoint is not None and running.get("fingerprint") == fingerprint:
            say(f"resume {stage.label}: continuing the interrupted run from {checkpoint}")
            config = config.model_copy(update={"resume": True})
        elif (out / "checkpoints").is_dir():
            # checkpoints of a run with another config would be resumed or interleaved with the new ones
            say(f"{stage.label}: removing {out / 'checkpoints'}, left by a run with another config")
            shutil.rmtree(out / "checkpoints")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RUNNING, {"fingerprint": fingerprint, "started_at": now()})
    return config


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(pipeline: Pipeline, dry_run: bool = False) -> dict[str, Any]:
    """Run (or, dry, plan) every stage in order; returns what pipeline.json holds."""
    hasher = ContentHasher()
    records = [StageRecord(s.name, s.kind, str(s.out)) for s in pipeline.stages]
    root = pipeline.output_dir
    if not dry_run:
        check_writable(root, "output_dir")
        for stage in pipeline.stages:
            check_writable(stage.out, f"stage '{stage.name}': output_dir")
        root.mkdir(parents=True, exist_ok=True)
        (root / "pipeline.yaml").write_text(yaml.safe_dump(pipeline.resolved, sort_keys=False))
    if dry_run:
        say(f"plan for {root} (dry run: nothing is run or written)")
    will_run: set[str] = set()
    stopped: str | None = None
    total = len(pipeline.stages)
    for index, (stage, record) in enumerate(zip(pipeline.stages, records), 1):
        if stopped:
            record.reason = stopped
            continue
        start = time.time()
        paths = input_paths(stage, root)
        record.inputs = {key: {"path": str(path), "sha256": hasher.tree(path)} for key, path in paths.items()}
        config_hash = config_digest(stage)
        record.fingerprint = sha256_json(
            {"config": config_hash, "inputs": {k: v["sha256"] for k, v in record.inputs.items()}}
        )
        reason = why_run(stage, record.fingerprint, config_hash, record.inputs, stage.name in pipeline.force, hasher)

        if dry_run:
            upstream = [name for name in stage.uses if name in will_run]
            if reason is None and upstream:
                record.status, record.reason = (
                    "maybe",
                    f"runs if {' or '.join(upstream)} {'writes' if len(upstream) == 1 else 'write'} different files",
                )
            else:
                record.status, record.reason = (
                    ("skip", "inputs and config unchanged") if reason is None else ("run", reason)
                )
            if record.status != "skip":
                will_run.add(stage.name)
            say(
                f"{index}/{total} {record.status:<5} {stage.label}: {record.reason}; fingerprint "
                f"{record.fingerprint[:12]}"
            )
            for key, value in record.inputs.items():
                say(f"        input {key}: {value['path']} sha256 {value['sha256'][:12]}")
            continue

        if reason is None:
            marker = read_json(stage.out / MARKER) or {}
            record.status, record.reason, record.summary = (
                "skipped",
                "inputs and config unchanged",
                marker.get("summary"),
            )
            record.passed = marker.get("passed")
            record.seconds = time.time() - start
            say(f"skip {stage.label}: inputs and config unchanged")
        else:
            console.rule(f"{index}/{total} {stage.label}: {reason}")
            config = prepare(stage, record.fingerprint)
            try:
                if STAGES[stage.kind].checkpoint:
                    record.passed = bool(STAGES[stage.kind].run(config, stage.checkpoint).passed)
                else:
                    STAGES[stage.kind].run(config)
            except BaseException:
                record.status, record.reason, record.seconds = "failed", reason, time.time() - start
                finish(pipeline, records, passed=False, report=False)
                raise
            summary = next((stage.out / name for name in SUMMARY_FILES if (stage.out / name).is_file()), None)
            record.status, record.reason, record.summary = "ran", reason, str(summary) if summary else None
            record.seconds = time.time() - start
            write_json(
                stage.out / MARKER,
                {
                    "name": stage.name,
                    "stage": stage.kind,
                    "fingerprint": record.fingerprint,
                    "config": config_hash,
                    "inputs": record.inputs,
                    "outputs": hasher.tree(stage.out),
                    "finished_at": now(),
                    "seconds": round(record.seconds, 2),
                    "summary": record.summary,
                    **({"passed": record.passed} if STAGES[stage.kind].checkpoint else {}),
                },
            )
            (stage.out / RUNNING).unlink(missing_ok=True)
        if record.passed is False:
            stopped = f"gate {stage.name} failed"
    if dry_run:
        return {
            "pipeline": pipeline.source,
            "output_dir": str(root),
            "dry_run": True,
            "passed": True,
            "stages": [stage_row(r) for r in records],
        }
    return finish(pipeline, records, passed=stopped is None)


def stage_row(record: StageRecord) -> dict[str, Any]:
    row = {
        "name": record.name,
        "stage": record.stage,
        "output_dir": record.output_dir,
        "status": record.status,
        "reason": record.reason,
        "seconds": round(record.seconds, 2),
        "fingerprint": record.fingerprint,
        "summary": record.summary,
        "inputs": record.inputs,
    }
    if record.passed is not None:
        row["passed"] = record.passed
    return row


def finish(pipeline: Pipeline, records: list[StageRecord], passed: bool, report: bool = True) -> dict[str, Any]:
    """Print one line per stage, build the report when the pipeline asks for one, and write OUTPUT_DIR/pipeline.json."""
    result = {
        "pipeline": pipeline.source,
        "output_dir": str(pipeline.output_dir),
        "finished_at": now(),
        "passed": passed,
        "seconds": round(sum(r.seconds for r in records), 2),
        "stages": [stage_row(r) for r in records],
    }
    if pipeline.report and report:
        from .report.html import build_report

        result["report"] = str(build_report(pipeline.output_dir))
    write_json(pipeline.output_dir / "pipeline.json", result)
    width = max(len(r.name) for r in records)
    kind_width = max(len(r.stage) for r in records)
    ran = sum(r.status == "ran" for r in records)
    skipped = sum(r.status == "skipped" for r in records)
    console.rule(f"pipeline {pipeline.output_dir}: {ran} ran, {skipped} skipped, {result['seconds']:.1f} s")
    for r in records:
        gate = "" if r.passed is None else (", PASSED" if r.passed else ", FAILED")
        say(f"{r.name:<{width}}  {r.stage:<{kind_width}}  {r.status:<7}  {r.seconds:7.1f} s  {r.reason}{gate}")
    if "report" in result:
        say(f"report: {result['report']}")
    say(f"pipeline.json: {pipeline.output_dir / 'pipeline.json'}")
    return result
