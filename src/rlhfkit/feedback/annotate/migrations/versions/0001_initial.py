"""The first schema: admins, projects, pairs, annotators, calibration overrides, assignments, judgments.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "admins",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        _created_at(),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("rubric", sa.Text(), nullable=False),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("max_judgments", sa.Integer(), nullable=False),
        sa.Column("agreement_threshold", sa.Float(), nullable=False),
        sa.Column("anchor_rate", sa.Float(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("dispute_below", sa.Float(), nullable=False),
        sa.Column("margin_below", sa.Float(), nullable=True),
        sa.Column("anchor_window", sa.Integer(), nullable=False),
        _created_at(),
    )
    op.create_table(
        "pairs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("response_a", sa.Text(), nullable=False),
        sa.Column("response_b", sa.Text(), nullable=False),
        sa.Column("answer", sa.String(16), nullable=True),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("category", sa.String(200), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=False),
        _created_at(),
        sa.UniqueConstraint("project_id", "external_id", name="uq_pairs_project_external_id"),
    )
    op.create_index("ix_pairs_project_id", "pairs", ["project_id"])
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=True, unique=True),
        _created_at(),
        sa.UniqueConstraint("project_id", "name", name="uq_annotators_project_name"),
    )
    op.create_index("ix_annotators_project_id", "annotators", ["project_id"])
    op.create_table(
        "calibration_overrides",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False),
        sa.Column("admin", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("agreement", sa.Float(), nullable=True),
        _created_at(),
    )
    op.create_index("ix_calibration_overrides_annotator_id", "calibration_overrides", ["annotator_id"])
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("pair_id", sa.Integer(), sa.ForeignKey("pairs.id"), nullable=False),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("shown_first", sa.String(1), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        _created_at(),
        sa.UniqueConstraint("annotator_id", "pair_id", "repeat", name="uq_assignments_annotator_pair_repeat"),
    )
    op.create_index("ix_assignments_project_id", "assignments", ["project_id"])
    op.create_index("ix_assignments_pair_id", "assignments", ["pair_id"])
    op.create_index("ix_assignments_annotator_done", "assignments", ["annotator_id", "done"])
    op.create_table(
        "judgments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("pair_id", sa.Integer(), sa.ForeignKey("pairs.id"), nullable=False),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False),
        sa.Column("assignment_id", sa.Integer(), sa.ForeignKey("assignments.id"), nullable=True, unique=True),
        sa.Column("choice", sa.String(16), nullable=False),
        sa.Column("shown_first", sa.String(1), nullable=True),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("rationale", sa.Text(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        _created_at(),
    )
    op.create_index("ix_judgments_project_pair", "judgments", ["project_id", "pair_id"])
    op.create_index("ix_judgments_annotator_id", "judgments", ["annotator_id"])


def downgrade() -> None:
    for table in ("judgments", "assignments", "calibration_overrides", "annotators", "pairs", "projects", "admins"):
        op.drop_table(table)
