"""Alembic environment of the annotation store. `rlhfkit annotate init` and `serve` run it through
`rlhfkit.feedback.annotate.db.upgrade_schema`, which passes an open connection in `config.attributes`."""

from alembic import context
from sqlalchemy import create_engine

from rlhfkit.feedback.annotate.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_with(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table instead
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as connection:
        run_with(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
