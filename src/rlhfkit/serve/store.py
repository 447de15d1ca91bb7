"""The gateway's store: API keys (hashed), the append-only audit log of every request and response, and the feedback
given on logged responses. SQLAlchemy over rlhfkit.sqlstore, the annotation app's store family: SQLite by default (WAL,
synchronous=FULL, so a committed entry survives a killed server) or PostgreSQL by URL.

An entry is written once, whole, when its response is complete and before the client gets the end of it (the JSON
body, or the final `data: [DONE]` of a stream); nothing updates or deletes it. Feedback rows point at entries.

For the flywheel: `window(db, since, until)` returns the prompts, responses and feedback of a time window.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..errors import RlhfkitError
from ..sqlstore import Database, StoreError, database_url, hash_token, make_engine, new_token, shown_url

DEFAULT_DB = "serve.sqlite"
KEY_PREFIX = "rk-"


class ServeError(RlhfkitError):
    """A request the gateway refuses: `status` is its HTTP status, `param` the field at fault, `code` a short name."""

    status = 400

    def __init__(
        self, message: str, status: int | None = None, param: str | None = None, code: str | None = None, headers=None
    ):
        super().__init__(message)
        self.status = status or self.status
        self.param, self.code, self.headers = param, code, headers or {}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC (naive datetimes are taken as UTC): the one form stored and compared."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "serve_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    tier: Mapped[str] = mapped_column(String(64), default="default")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the key itself is never stored
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell keys apart in listings
    requests_limit: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: the config's limit
    tokens_limit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Entry(Base):
    """One request and its response, as served."""

    __tablename__ = "serve_entries"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the response id the client got
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)  # when the request arrived
    key_id: Mapped[int | None] = mapped_column(ForeignKey("serve_keys.id"), nullable=True, index=True)
    key_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    route: Mapped[str] = mapped_column(String(100), index=True)
    checkpoint: Mapped[str] = mapped_column(Text)  # model directory, or upstream URL and model
    endpoint: Mapped[str] = mapped_column(String(32))  # chat.completions or completions
    stream: Mapped[bool] = mapped_column(Boolean)
    prompt: Mapped[Any] = mapped_column(JSON)  # the prompt text, or the chat messages
    prompt_text: Mapped[str | None] = mapped_column(Text, nullable=True)  # as the model saw it (local routes)
    params: Mapped[dict] = mapped_column(JSON)  # max_tokens, temperature, top_p
    response: Mapped[str] = mapped_column(Text)
    token_ids: Mapped[list | None] = mapped_column(JSON, nullable=True)  # every generated token (local routes)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)  # stop or length
    status: Mapped[str] = mapped_column(String(16))  # ok, error or cancelled (the client went away)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)  # time to the first generated token


class Feedback(Base):
    """Thumbs up/down on one response, or a choice between two responses shown side by side."""

    __tablename__ = "serve_feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entry_id: Mapped[str] = mapped_column(ForeignKey("serve_entries.id"), index=True)  # rated, or chosen
    kind: Mapped[str] = mapped_column(String(16))  # thumbs or choice
    rating: Mapped[str | None] = mapped_column(String(8), nullable=True)  # up or down (thumbs)
    other_id: Mapped[str | None] = mapped_column(ForeignKey("serve_entries.id"), nullable=True)  # rejected (choice)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_id: Mapped[int | None] = mapped_column(ForeignKey("serve_keys.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


# ------------------------------------------------------------------------------------------------ opening


def open_store(db: str = DEFAULT_DB) -> Database:
    """Connect and create the tables that are missing (a new SQLite file is created; its folder must exist)."""
    url = database_url(db)
    engine = make_engine(url)
    try:
        Base.metadata.create_all(engine)
    except DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StoreError(f"db {shown_url(url)}: cannot open the gateway store ({reason})") from None
    from sqlalchemy.orm import sessionmaker

    return Database(url, engine, sessionmaker(engine, expire_on_commit=False))


# ------------------------------------------------------------------------------------------------ keys


def add_key(
    database: Database,
    name: str,
    tier: str = "default",
    *,
    requests: str | None = None,
    tokens: str | None = None,
    admin: bool = False,
) -> str:
    """Create a key and return it; it is shown this once and stored only as its sha256."""
    key, digest = new_token(KEY_PREFIX)
    with database.session() as s:
        s.add(
            ApiKey(
                name=name,
                tier=tier,
                key_hash=digest,
                prefix=key[:10],
                requests_limit=requests,
                tokens_limit=tokens,
                admin=admin,
            )
        )
        try:
            s.commit()
        except IntegrityError:
            raise ServeError(f"a key named '{name}' exists already; choose another name or revoke it first") from None
    return key


def find_key(database: Database, key: str) -> ApiKey | None:
    """The unrevoked key with this value, or None."""
    with database.session() as s:
        return s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_token(key), ApiKey.revoked.is_(False)))


def list_keys(database: Database) -> list[ApiKey]:
    with database.session() as s:
        return list(s.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(database: Database, name: str) -> None:
    with database.session() as s:
        key = s.scalar(select(ApiKey).where(ApiKey.name == name))
        if key is None:
            raise ServeError(f"no key named '{name}'; `rlhfkit serve keys list` shows them", status=404)
        key.revoked = True
        s.commit()


# ------------------------------------------------------------------------------------------------ the log


def append(database: Database, entry: Entry) -> None:
    """Write one entry, committed (on disk) when this returns."""
    with database.session() as s:
        s.add(entry)
        s.commit()


def get_entry(database: Database, entry_id: str) -> Entry | None:
    with database.session() as s:
        return s.get(Entry, entry_id)


def add_feedback(database: Database, feedback: Feedback) -> int:
    with database.session() as s:
        s.add(feedback)
        s.commit()
        return feedback.id


def entries(
    database: Database,
    since: datetime | None = None,
    until: datetime | None = None,
    route: str | None = None,
    key: str | None = None,
    limit: int | None = None,
) -> list[Entry]:
    """Logged entries, oldest first, with created_at in [since, until); `key` is a key's name; `limit` keeps the
    newest."""
    query = select(Entry)
    if since is not None:
        query = query.where(Entry.created_at >= as_utc(since))
    if until is not None:
        query = query.where(Entry.created_at < as_utc(until))
    if route is not None:
        query = query.where(Entry.route == route)
    if key is not None:
        query = query.where(Entry.key_name == key)
    query = query.order_by(Entry.created_at.desc(), Entry.id.desc())
    if limit is not None:
        query = query.limit(limit)
    with database.session() as s:
        return list(reversed(s.scalars(query).all()))


def entry_dict(entry: Entry) -> dict[str, Any]:
    """An entry as JSON-ready values (what `rlhfkit serve log --format json` prints, one a line)."""
    return {
        "id": entry.id,
        "created_at": as_utc(entry.created_at).isoformat(),
        "key": entry.key_name,
        "route": entry.route,
        "checkpoint": entry.checkpoint,
        "endpoint": entry.endpoint,
        "stream": entry.stream,
        "prompt": entry.prompt,
        "prompt_text": entry.prompt_text,
        "params": entry.params,
        "response": entry.response,
        "token_ids": entry.token_ids,
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "finish_reason": entry.finish_reason,
        "status": entry.status,
        "error": entry.error,
        "latency_ms": entry.latency_ms,
        "ttft_ms": entry.ttft_ms,
    }


def window(db: str | Database, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """The prompts, responses and feedback of the requests that arrived in [since, until), oldest first: what the
    flywheel turns into new pairs. Each item is `entry_dict(entry)` plus `feedback`, a list of
    {kind: thumbs, rating: up|down, text, created_at} and {kind: choice, chosen, rejected, text, created_at} for
    every feedback row that names the entry (a choice appears under both of its responses)."""
    database = db if isinstance(db, Database) else open_store(db)
    try:
        logged = entries(database, since, until)
        ids = [e.id for e in logged]
        feedback: dict[str, list[dict]] = {i: [] for i in ids}
        with database.session() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = s.scalars(
                    select(Feedback)
                    .where(Feedback.entry_id.in_(chunk) | Feedback.other_id.in_(chunk))
                    .order_by(Feedback.id)
                )
                for row in rows:
                    item = {"kind": row.kind, "text": row.text, "created_at": as_utc(row.created_at).isoformat()}
                    if row.kind == "thumbs":
                        item["rating"] = row.rating
                    else:
                        item["chosen"], item["rejected"] = row.entry_id, row.other_id
                    for target in {row.entry_id, row.other_id} & feedback.keys():
                        if item not in feedback[target]:
                            feedback[target].append(item)
        return [{**entry_dict(e), "feedback": feedback[e.id]} for e in logged]
    finally:
        if not isinstance(db, Database):
            database.close()
