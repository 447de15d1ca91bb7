"""Opening the annotation store: schema upgrades (alembic) over the shared SQL store (rlhfkit.sqlstore).

`--db` takes a SQLAlchemy URL or a plain file path (a SQLite file). `postgresql://` URLs use psycopg 3.
SQLite runs in WAL mode with synchronous=FULL (a commit is on disk before the response goes out) and every
transaction starts with BEGIN IMMEDIATE, so concurrent writers queue on the busy timeout instead of failing.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker

from ... import sqlstore
from ...errors import RlhfkitError
from ...sqlstore import Database, StoreError, database_url, shown_url

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_DB = "annotate.sqlite"


class AnnotateError(RlhfkitError):
    """A request or command the annotation store cannot carry out; `status` is its HTTP status in the app."""

    status = 422


class DatabaseError(AnnotateError, StoreError):
    status = 503


def make_engine(url: str, connections: int = 60) -> Engine:
    try:
        return sqlstore.make_engine(url, connections)
    except StoreError as exc:
        raise DatabaseError(str(exc)) from None


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    config = _alembic_config(None)
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema to the newest migration (a no-op when it is there already)."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "head")


def open_database(db: str = DEFAULT_DB, create: bool = False, connections: int = 60) -> Database:
    """Connect and upgrade the schema to head. Without `create`, the store must exist already (`rlhfkit annotate
    init` makes it), so a mistyped path or URL is an error instead of a new empty store. At most `connections`
    connections are open at once."""
    url = database_url(db)
    if url.startswith("sqlite") and not create:
        path = make_url(url).database
        if path and path != ":memory:" and not Path(path).is_file():
            raise DatabaseError(
                f"--db {db}: no annotation store there; create it with `rlhfkit annotate init --db {db}`"
            )
    if url.startswith("sqlite") and create:
        path = make_url(url).database
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise DatabaseError(f"--db {db}: folder {Path(path).parent} does not exist")
    engine = make_engine(url, connections)
    try:
        with engine.connect():
            pass
        if not create and "alembic_version" not in inspect(engine).get_table_names():
            raise DatabaseError(
                f"--db {shown_url(url)}: no annotation store there; create it with `rlhfkit annotate init --db ...`"
            )
        upgrade_schema(engine)
    except DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(f"--db {shown_url(url)}: cannot connect ({reason})") from None
    except DatabaseError:
        engine.dispose()
        raise
    return Database(url, engine, sessionmaker(engine, expire_on_commit=False))
