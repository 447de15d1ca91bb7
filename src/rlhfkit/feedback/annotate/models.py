"""The annotation store: tables for admins, projects, pairs, annotators, assignments and judgments.

The schema is created and changed only by the alembic migrations in `migrations/versions/`; these classes
must match them (tests/test_annotate_api.py checks that the migrated schema and these models agree).

Words used throughout:
- a *pair* has two responses, `a` and `b`, in the order they were imported; its `role` is `main` (to be
  labelled), `calibration` (every annotator labels it first) or `anchor` (a known `answer`, mixed into batches);
- an *assignment* puts one pair in one annotator's queue, with the side shown first (left) drawn at random;
- a *judgment* is the label: `choice` is in pair terms ("a", "b", "tie", "both_bad"), whatever side it was shown on.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Admin(Base):
    __tablename__ = "admins"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(
        String(64), unique=True
    )  # sha256 hex of the token; the token itself is never stored
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    rubric: Mapped[str] = mapped_column(Text, default="")
    criteria: Mapped[list] = mapped_column(JSON, default=list)
    overlap: Mapped[int] = mapped_column(Integer, default=2)
    max_judgments: Mapped[int] = mapped_column(Integer, default=4)
    agreement_threshold: Mapped[float] = mapped_column(Float, default=0.65)
    anchor_rate: Mapped[float] = mapped_column(Float, default=0.1)
    batch_size: Mapped[int] = mapped_column(Integer, default=10)
    dispute_below: Mapped[float] = mapped_column(Float, default=0.6)
    margin_below: Mapped[float | None] = mapped_column(Float, nullable=True)
    sample_by: Mapped[str] = mapped_column(String(16), default="margin", server_default="margin")
    disagreement_above: Mapped[float | None] = mapped_column(Float, nullable=True)
    anchor_window: Mapped[int] = mapped_column(Integer, default=5)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Pair(Base):
    __tablename__ = "pairs"
    # (project, role, margin): the queue counts a project's main pairs and finds those with a margin by this index
    __table_args__ = (
        UniqueConstraint("project_id", "external_id", name="uq_pairs_project_external_id"),
        Index("ix_pairs_project_role_margin", "project_id", "role", "margin"),
        Index("ix_pairs_project_role_disagreement", "project_id", "role", "disagreement"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    prompt: Mapped[Any] = mapped_column(JSON)  # text, or a list of chat messages
    response_a: Mapped[str] = mapped_column(Text)
    response_b: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(
        String(16), nullable=True
    )  # known answer of calibration and anchor pairs
    margin: Mapped[float | None] = mapped_column(Float, nullable=True)  # reward-model margin r(a) - r(b), when uploaded
    # a reward-model ensemble's disagreement on the pair (std over members of sigmoid(r_a - r_b)), when uploaded
    disagreement: Mapped[float | None] = mapped_column(Float, nullable=True)
    category: Mapped[str | None] = mapped_column(String(200), nullable=True)
    extra: Mapped[dict] = mapped_column(JSON, default=dict)  # the imported record's metadata, kept for the export
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Annotator(Base):
    __tablename__ = "annotators"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_annotators_project_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(
        String(16), default="human"
    )  # human, or machine-made: ai (a judge model) or panel (simulated)
    token_hash: Mapped[str | None] = mapped_column(
        String(64), unique=True, nullable=True
    )  # machine annotators have none; revoked tokens are set to none
    # the secret the places of anchors in this annotator's queue are drawn from; never shown
    queue_seed: Mapped[str | None] = mapped_column(String(32), nullable=True, default=lambda: secrets.token_hex(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CalibrationOverride(Base):
    """An admin opened an annotator's main queue despite their calibration agreement; kept for the record."""

    __tablename__ = "calibration_overrides"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    admin: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    agreement: Mapped[float | None] = mapped_column(Float, nullable=True)  # the calibration agreement at the time
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Assignment(Base):
    __tablename__ = "assignments"
    # one assignment per annotator and pair: no pair, anchors included, is shown to an annotator twice (`repeat`
    # stays 0; stores made before anchors stopped coming back may hold higher ones)
    __table_args__ = (
        UniqueConstraint("annotator_id", "pair_id", "repeat", name="uq_assignments_annotator_pair_repeat"),
        Index("ix_assignments_annotator_done", "annotator_id", "done"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    phase: Mapped[str] = mapped_column(String(16))  # calibration, main or anchor
    repeat: Mapped[int] = mapped_column(Integer, default=0)
    shown_first: Mapped[str] = mapped_column(String(1))  # "a" or "b": the response shown on the left
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Judgment(Base):
    __tablename__ = "judgments"
    __table_args__ = (Index("ix_judgments_project_pair", "project_id", "pair_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    # unique: a re-submitted judgment for the same assignment never makes a second row; imported ones have none
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignments.id"), unique=True, nullable=True)
    choice: Mapped[str] = mapped_column(String(16))
    shown_first: Mapped[str | None] = mapped_column(String(1), nullable=True)
    criteria: Mapped[dict] = mapped_column(JSON, default=dict)  # per-criterion choices in pair terms
    rationale: Mapped[str | None] = mapped_column(Text, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # from assignment to judgment
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
