"""Opening the annotation store: database URLs, engines, sessions and schema upgrades (alembic).

`--db` takes a SQLAlchemy URL or a plain file path (a SQLite file). `postgresql://` URLs use psycopg 3.
SQLite runs in WAL mode with synchronous=FULL (a commit is on disk before the response goes out) and every
transaction starts with BEGIN IMMEDIATE, so concurrent writers queue on the busy timeout instead of failing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from ...errors import RlhfkitError

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_DB = "annotate.sqlite"


class AnnotateError(RlhfkitError):
    """A request or command the annotation store cannot carry out; `status` is its HTTP status in the app."""

    status = 422


class DatabaseError(AnnotateError):
    status = 503


def database_url(db: str) -> str:
    """A SQLAlchemy URL from `--db`: a URL is kept (postgresql:// gets the psycopg 3 driver), a path becomes SQLite."""
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if db.startswith(prefix):
            return "postgresql+psycopg://" + db[len(prefix) :]
    return db


def shown_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below), not the sqlite3 module
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        # take the write lock up front: a read transaction upgraded to a write one can fail with "database is locked"
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(
                url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=20, max_overflow=40
            )
            _sqlite_pragmas(engine)
            return engine
        return create_engine(
            url, pool_size=20, max_overflow=40, pool_pre_ping=True, connect_args={"connect_timeout": 5}
        )
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"--db {shown_url(url)}: not a database URL this tool can open ({exc})") from None


@dataclass
class Database:
    url: str
    engine: Engine
    sessions: sessionmaker
    # SQLite has one writer at a time; threads of this process queue here, in order, rather than in SQLite's busy
    # handler, which sleeps in growing steps (up to 100 ms) and makes the slowest requests much slower
    writer: Any = field(default_factory=threading.Lock)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.writer if self.url.startswith("sqlite") else nullcontext(), self.sessions() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()


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


def open_database(db: str = DEFAULT_DB, create: bool = False) -> Database:
    """Connect and upgrade the schema to head. Without `create`, the store must exist already (`rlhfkit annotate
    init` makes it), so a mistyped path or URL is an error instead of a new empty store."""
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
    engine = make_engine(url)
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
