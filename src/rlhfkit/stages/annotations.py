"""Stage `annotations` (a flywheel round): people label the round's candidate pairs in the annotation app.

Creates the project (or finds it, when a resumed round created it already), imports the first `pairs` candidates,
then waits until the project holds `judgments` human judgments (or `timeout` seconds pass: an error, and the rerun
waits again), and exports the majority labels to pairs.jsonl. Annotators work in the app's browser UI or its API
(`rlhfkit annotate invite NAME --project PROJECT` prints their link)."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field
from sqlalchemy import func, select

from ..atomic import write_json
from ..config import Strict, save_config
from ..console import say
from ..data.records import read_jsonl, write_jsonl
from ..errors import DataError
from ..feedback.annotate import service
from ..feedback.annotate.db import open_database
from ..feedback.annotate.models import Annotator, Judgment


class AnnotationsConfig(Strict):
    """Labels from people in the annotation app for one round's candidate pairs."""

    data: str = Field(..., description="the round's candidate pairs (preference JSONL)")
    db: str = Field("annotate.sqlite", description="the annotation app's store, made by `rlhfkit annotate init`")
    project: str = Field(..., description="the round's project (created when missing)")
    rubric: str = Field("", description="rubric shown to annotators")
    pairs: int = Field(50, gt=0, description="candidate pairs imported")
    judgments: int = Field(50, gt=0, description="human judgments to wait for")
    timeout: float = Field(3600.0, gt=0, description="seconds to wait; then the stage fails and a rerun waits again")
    poll: float = Field(2.0, gt=0, description="seconds between looks")
    output_dir: str = Field("runs/annotations", description="writes pairs.jsonl and summary.json")


def human_judgments(database, project_name: str) -> int:
    with database.session() as s:
        project = service.get_project(s, project_name)
        return s.scalar(
            select(func.count(Judgment.id))
            .join(Annotator, Annotator.id == Judgment.annotator_id)
            .where(Judgment.project_id == project.id, Annotator.kind == "human")
        )


def run(config: AnnotationsConfig) -> dict:
    out = Path(config.output_dir)
    save_config(config, out)
    database = open_database(config.db)
    try:
        with database.session() as s:
            if config.project not in {p["name"] for p in service.list_projects(s)}:
                project = service.create_project(s, service.ProjectSettings(name=config.project, rubric=config.rubric))
                rows = [row for row in read_jsonl(config.data)][: config.pairs]
                service.import_pairs(s, project, rows, config.data, "main")
                s.commit()
                say(f"annotations: project '{config.project}' created with {len(rows)} pairs in {config.db}")
        deadline = time.monotonic() + config.timeout
        count = human_judgments(database, config.project)
        while count < config.judgments:
            if time.monotonic() > deadline:
                raise DataError(
                    f"project '{config.project}': {count} of {config.judgments} human judgments after "
                    f"{config.timeout:.0f} s; invite annotators (`rlhfkit annotate invite NAME --project "
                    f"{config.project}`) and run the flywheel again to keep waiting"
                )
            time.sleep(config.poll)
            count = human_judgments(database, config.project)
        with database.session() as s:
            pairs, left_out = service.export_preferences(s, service.get_project(s, config.project))
    finally:
        database.close()
    write_jsonl(out / "pairs.jsonl", pairs)
    summary = {"stage": "annotations", "project": config.project, "judgments": count, "pairs": len(pairs), **left_out}
    write_json(out / "summary.json", summary)
    say(f"annotations: {count} human judgments in '{config.project}', {len(pairs)} labelled pairs")
    return summary
