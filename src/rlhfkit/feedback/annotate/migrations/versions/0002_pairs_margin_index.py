"""An index on pairs (project, role, margin): the queue's count of main pairs and its look-up of the best untouched
pair with an uploaded margin read the index instead of every pair.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_pairs_project_role_margin", "pairs", ["project_id", "role", "margin"])


def downgrade() -> None:
    op.drop_index("ix_pairs_project_role_margin", table_name="pairs")
