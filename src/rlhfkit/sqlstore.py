"""SQL stores (the annotation app, the serving gateway): URLs, engines, sessions and hashed tokens.

A store is named by a SQLAlchemy URL or a plain file path (a SQLite file); `postgresql://` URLs use psycopg 3.
SQLite runs in WAL mode with synchronous=FULL (a commit is on disk before the response goes out) and every
transaction starts with BEGIN IMMEDIATE, so concurrent writers queue on the busy timeout instead of failing.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from .errors import RlhfkitError


class StoreError(RlhfkitError):
    """A store that cannot be opened or reached; `status` is its HTTP status in an app."""

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


def make_engine(url: str, connections: int = 60) -> Engine:
    """An engine holding at most `connections` connections (a third kept open; requests beyond wait for one)."""
    pool = {"pool_size": max(1, connections // 3), "max_overflow": connections - max(1, connections // 3)}
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **pool)
            _sqlite_pragmas(engine)
            return engine
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5}, **pool)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"--db {shown_url(url)}: not a database URL this tool can open ({exc})") from None


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


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(prefix: str = "") -> tuple[str, str]:
    """(token, its sha256); only the hash is stored."""
    token = prefix + secrets.token_urlsafe(32)
    return token, hash_token(token)
