"""annotators.queue_seed: a secret per annotator from which the places of anchors in their queue are drawn, so no
one can work them out from what the app shows (ids, positions). Existing annotators get one each.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("annotators", sa.Column("queue_seed", sa.String(32), nullable=True))
    annotators = sa.table("annotators", sa.column("id", sa.Integer), sa.column("queue_seed", sa.String))
    connection = op.get_bind()
    for (annotator_id,) in connection.execute(sa.select(annotators.c.id)).all():
        connection.execute(
            annotators.update().where(annotators.c.id == annotator_id).values(queue_seed=secrets.token_hex(16))
        )


def downgrade() -> None:
    op.drop_column("annotators", "queue_seed")
