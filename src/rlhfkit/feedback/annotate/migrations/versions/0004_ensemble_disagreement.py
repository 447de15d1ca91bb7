"""Dynamic sampling by ensemble disagreement: pairs.disagreement (a reward-model ensemble's std over members of
sigmoid(r_a - r_b), uploaded with the margins) with its index, and the project settings sample_by ('margin' for
every existing project) and disagreement_above.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pairs", sa.Column("disagreement", sa.Float(), nullable=True))
    op.create_index("ix_pairs_project_role_disagreement", "pairs", ["project_id", "role", "disagreement"])
    op.add_column("projects", sa.Column("sample_by", sa.String(16), nullable=False, server_default="margin"))
    op.add_column("projects", sa.Column("disagreement_above", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("projects", "disagreement_above")
    op.drop_column("projects", "sample_by")
    op.drop_index("ix_pairs_project_role_disagreement", table_name="pairs")
    op.drop_column("pairs", "disagreement")
